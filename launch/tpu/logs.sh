#!/usr/bin/env bash
# Follow the training log of a worker (worker 0, the one that writes metrics, by default).
# Ctrl-C stops following; the run goes on.
#
#   launch/tpu/logs.sh [--worker=0|N|all] [--dry-run] [settings]
#
# Needs project, zone and name. Runs:
#   gcloud compute tpus tpu-vm ssh NAME --project=PROJECT --zone=ZONE --worker=WORKER --command 'bash prs_jax_worker.sh logs'
set -euo pipefail
# shellcheck source=../common.sh
source "$(dirname "$0")/../common.sh"
parse_flags "$@"
require PROJECT ZONE NAME

run gcloud compute tpus tpu-vm ssh "${NAME}" --project="${PROJECT}" --zone="${ZONE}" \
  --worker="${WORKER}" --command "$(shell_words bash "${REMOTE_WORKER}" logs)"
