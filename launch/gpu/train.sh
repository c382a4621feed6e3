#!/usr/bin/env bash
# Start training on the GPU VM in a tmux session (`prs_jax`) and return. The run writes to a
# copy of the workdir on the VM's disk and syncs it to the gs:// workdir every 10 minutes and
# at the end; a rerun (say, after a spot preemption) first fetches the bucket's copy, so it
# resumes from the latest checkpoint. Follow it with logs.sh, or attach:
# `gcloud compute ssh NAME -- -t tmux attach -t prs_jax`.
#
#   launch/gpu/train.sh [--config=configs/cifar100.py:ARG] [--dry-run] [settings] [-- MAIN_FLAGS]
#
# Needs project, zone, name, workdir (gs://) and TFDS data dir. Runs:
#   gcloud compute ssh NAME --project=PROJECT --zone=ZONE --command 'bash prs_jax_worker.sh start --detach=tmux --workdir=WORKDIR --sync-every-s=600 --tfds-data-dir=TFDS_DATA_DIR --[ --config=CONFIG][ MAIN_ARGS]'
set -euo pipefail
# shellcheck source=../common.sh
source "$(dirname "$0")/../common.sh"
parse_flags "$@"
require PROJECT ZONE NAME TFDS_DATA_DIR
require_gs_workdir

set_main_flags
remote=(bash "${REMOTE_WORKER}" start --detach=tmux --workdir="${WORKDIR}" --sync-every-s=600
  --tfds-data-dir="${TFDS_DATA_DIR}" -- "${MAIN_FLAGS[@]}")
run gcloud compute ssh "${NAME}" --project="${PROJECT}" --zone="${ZONE}" \
  --command "$(shell_words "${remote[@]}")"
