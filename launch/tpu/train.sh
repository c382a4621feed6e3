#!/usr/bin/env bash
# Start training on every worker at once (one process per host, `--jax_distributed`) and
# return; the run continues in the background on the VMs. Follow it with logs.sh.
#
#   launch/tpu/train.sh [--config=configs/cifar100.py:ARG] [--dry-run] [settings] [-- MAIN_FLAGS]
#
# Needs project, zone, name, accelerator type, workdir and TFDS data dir. The workdir must be
# on gs:// for a multi-host slice (every worker writes its part of each checkpoint there); a
# single host may also use an absolute path on the VM. A rerun with the same workdir resumes
# from its latest checkpoint. Runs:
#   gcloud compute tpus tpu-vm ssh NAME --project=PROJECT --zone=ZONE --worker=all --command 'bash prs_jax_worker.sh start --workdir=WORKDIR --tfds-data-dir=TFDS_DATA_DIR -- --jax_distributed[ --config=CONFIG][ MAIN_ARGS]'
set -euo pipefail
# shellcheck source=../common.sh
source "$(dirname "$0")/../common.sh"
parse_flags "$@"
require PROJECT ZONE NAME ACCELERATOR_TYPE WORKDIR TFDS_DATA_DIR

hosts="$(tpu_hosts "${ACCELERATOR_TYPE}")"
if [[ "${WORKDIR}" != gs://* ]]; then
  ((hosts == 1)) || die "${ACCELERATOR_TYPE} has ${hosts/#0/several} hosts: the workdir must be on gs:// (every worker writes its part of each checkpoint there), not ${WORKDIR}"
  [[ "${WORKDIR}" == /* ]] || die "workdir ${WORKDIR} must be gs://BUCKET/PATH or an absolute path on the VM"
fi
echo "${NAME}: ${ACCELERATOR_TYPE}, ${hosts/#0/an unknown number of} host(s), one process each" >&2

# On Cloud TPU, jax.distributed.initialize() finds the other workers itself (one host: one process).
set_main_flags
remote=(bash "${REMOTE_WORKER}" start --workdir="${WORKDIR}" --tfds-data-dir="${TFDS_DATA_DIR}"
  -- --jax_distributed "${MAIN_FLAGS[@]}")
run gcloud compute tpus tpu-vm ssh "${NAME}" --project="${PROJECT}" --zone="${ZONE}" --worker=all \
  --command "$(shell_words "${remote[@]}")"
