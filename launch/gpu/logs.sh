#!/usr/bin/env bash
# Follow the training log on the GPU VM. Ctrl-C stops following; the run goes on.
#
#   launch/gpu/logs.sh [--dry-run] [settings]
#
# Needs project, zone and name. Runs:
#   gcloud compute ssh NAME --project=PROJECT --zone=ZONE --command 'bash prs_jax_worker.sh logs'
set -euo pipefail
# shellcheck source=../common.sh
source "$(dirname "$0")/../common.sh"
parse_flags "$@"
require PROJECT ZONE NAME

run gcloud compute ssh "${NAME}" --project="${PROJECT}" --zone="${ZONE}" \
  --command "$(shell_words bash "${REMOTE_WORKER}" logs)"
