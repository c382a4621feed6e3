#!/usr/bin/env bash
# Stop the run on every worker: SIGTERM, on which training saves a checkpoint and exits (a
# later train.sh with the same workdir resumes from it).
#
#   launch/tpu/stop.sh [--dry-run] [settings]
#
# Needs project, zone and name. Runs:
#   gcloud compute tpus tpu-vm ssh NAME --project=PROJECT --zone=ZONE --worker=all --command 'bash prs_jax_worker.sh stop'
set -euo pipefail
# shellcheck source=../common.sh
source "$(dirname "$0")/../common.sh"
parse_flags "$@"
require PROJECT ZONE NAME

run gcloud compute tpus tpu-vm ssh "${NAME}" --project="${PROJECT}" --zone="${ZONE}" \
  --worker=all --command "$(shell_words bash "${REMOTE_WORKER}" stop)"
