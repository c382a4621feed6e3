#!/usr/bin/env bash
# Stop the run on the GPU VM: SIGTERM, on which training saves a checkpoint and exits; the
# worker then syncs the workdir to the bucket one last time.
#
#   launch/gpu/stop.sh [--dry-run] [settings]
#
# Needs project, zone and name. Runs:
#   gcloud compute ssh NAME --project=PROJECT --zone=ZONE --command 'bash prs_jax_worker.sh stop'
set -euo pipefail
# shellcheck source=../common.sh
source "$(dirname "$0")/../common.sh"
parse_flags "$@"
require PROJECT ZONE NAME

run gcloud compute ssh "${NAME}" --project="${PROJECT}" --zone="${ZONE}" \
  --command "$(shell_words bash "${REMOTE_WORKER}" stop)"
