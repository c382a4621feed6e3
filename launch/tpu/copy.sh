#!/usr/bin/env bash
# Copy a run's results (checkpoints, metrics.jsonl, TensorBoard events, config.json) and
# worker 0's log to this machine, into --dest (default results/NAME).
#
#   launch/tpu/copy.sh [--dest=DIR] [--dry-run] [settings]
#
# Needs project, zone, name and workdir. Runs, for a gs:// workdir:
#   gcloud storage rsync --recursive WORKDIR DEST
#   gcloud compute tpus tpu-vm scp NAME:prs_jax/train.log DEST/train.log --project=PROJECT --zone=ZONE --worker=0
# and for a workdir on a single-host VM:
#   gcloud compute tpus tpu-vm scp --recurse NAME:WORKDIR DEST --project=PROJECT --zone=ZONE --worker=0
#   gcloud compute tpus tpu-vm scp NAME:prs_jax/train.log DEST/train.log --project=PROJECT --zone=ZONE --worker=0
set -euo pipefail
# shellcheck source=../common.sh
source "$(dirname "$0")/../common.sh"
parse_flags "$@"
require PROJECT ZONE NAME WORKDIR
DEST="${DEST:-results/${NAME}}"

is_true "${DRY_RUN}" || mkdir -p "${DEST}"
where=(--project="${PROJECT}" --zone="${ZONE}" --worker=0)
if [[ "${WORKDIR}" == gs://* ]]; then
  run gcloud storage rsync --recursive "${WORKDIR}" "${DEST}"
else
  run gcloud compute tpus tpu-vm scp --recurse "${NAME}:${WORKDIR}" "${DEST}" "${where[@]}"
fi
run gcloud compute tpus tpu-vm scp "${NAME}:prs_jax/train.log" "${DEST}/train.log" "${where[@]}"
