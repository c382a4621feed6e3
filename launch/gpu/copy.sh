#!/usr/bin/env bash
# Copy a run's results from the bucket (checkpoints, metrics.jsonl, TensorBoard events,
# config.json, logs/) and the VM's current log to this machine, into --dest (default
# results/NAME). What the bucket holds is at most 10 minutes behind the VM while a run goes.
#
#   launch/gpu/copy.sh [--dest=DIR] [--dry-run] [settings]
#
# Needs project, zone, name and workdir (gs://). Runs:
#   gcloud storage rsync --recursive WORKDIR DEST
#   gcloud compute scp NAME:prs_jax/train.log DEST/train.log --project=PROJECT --zone=ZONE
set -euo pipefail
# shellcheck source=../common.sh
source "$(dirname "$0")/../common.sh"
parse_flags "$@"
require PROJECT ZONE NAME
require_gs_workdir
DEST="${DEST:-results/${NAME}}"

is_true "${DRY_RUN}" || mkdir -p "${DEST}"
run gcloud storage rsync --recursive "${WORKDIR}" "${DEST}"
run gcloud compute scp "${NAME}:prs_jax/train.log" "${DEST}/train.log" --project="${PROJECT}" --zone="${ZONE}"
