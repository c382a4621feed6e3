#!/usr/bin/env bash
# Set up the GPU VM, idempotently: copy launch/worker.sh to it and run its `setup` (waits for
# the NVIDIA driver, then Python >= 3.11, a venv, the repository at --ref, jax[cuda12] and the
# package). Rerun it after pushing new code: only what changed is redone.
#
#   launch/gpu/setup.sh [--repo=URL] [--ref=BRANCH|TAG|COMMIT] [--dry-run] [settings]
#
# Needs project, zone and name; the repository defaults to this checkout's origin and the ref
# to main. Runs:
#   gcloud compute scp LAUNCH_DIR/worker.sh NAME:prs_jax_worker.sh --project=PROJECT --zone=ZONE
#   gcloud compute ssh NAME --project=PROJECT --zone=ZONE --command 'bash prs_jax_worker.sh setup --repo=REPO --ref=REF --accelerator=gpu'
set -euo pipefail
# shellcheck source=../common.sh
source "$(dirname "$0")/../common.sh"
parse_flags "$@"
require PROJECT ZONE NAME
default_repo

where=(--project="${PROJECT}" --zone="${ZONE}")
run gcloud compute scp "${LAUNCH_DIR}/worker.sh" "${NAME}:${REMOTE_WORKER}" "${where[@]}"
run gcloud compute ssh "${NAME}" "${where[@]}" \
  --command "$(shell_words bash "${REMOTE_WORKER}" setup --repo="${REPO}" --ref="${REF}" --accelerator=gpu)"
