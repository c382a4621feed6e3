#!/usr/bin/env bash
# Set up every worker of the TPU VM or slice, idempotently: copy launch/worker.sh to each
# worker and run its `setup` there (Python >= 3.11, a venv, the repository at --ref, jax[tpu]
# and the package). Rerun it after pushing new code: only what changed is redone.
#
#   launch/tpu/setup.sh [--repo=URL] [--ref=BRANCH|TAG|COMMIT] [--dry-run] [settings]
#
# Needs project, zone and name; the repository defaults to this checkout's origin and the ref
# to main. Runs:
#   gcloud compute tpus tpu-vm scp LAUNCH_DIR/worker.sh NAME:prs_jax_worker.sh --project=PROJECT --zone=ZONE --worker=all
#   gcloud compute tpus tpu-vm ssh NAME --project=PROJECT --zone=ZONE --worker=all --command 'bash prs_jax_worker.sh setup --repo=REPO --ref=REF --accelerator=tpu'
set -euo pipefail
# shellcheck source=../common.sh
source "$(dirname "$0")/../common.sh"
parse_flags "$@"
require PROJECT ZONE NAME
default_repo

where=(--project="${PROJECT}" --zone="${ZONE}" --worker=all)
run gcloud compute tpus tpu-vm scp "${LAUNCH_DIR}/worker.sh" "${NAME}:${REMOTE_WORKER}" "${where[@]}"
run gcloud compute tpus tpu-vm ssh "${NAME}" "${where[@]}" \
  --command "$(shell_words bash "${REMOTE_WORKER}" setup --repo="${REPO}" --ref="${REF}" --accelerator=tpu)"
