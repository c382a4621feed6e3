#!/usr/bin/env bash
# Create a Compute Engine VM with one or more NVIDIA GPUs, from a Deep Learning VM image that
# installs the driver on first boot. On demand, or spot with --spot (stopped, not deleted, on
# preemption: start it again and rerun train.sh to resume from the bucket).
#
#   launch/gpu/create.sh [--machine-type=g2-standard-8] [--gpu-type=... --gpu-count=N] [--spot] [--dry-run] [settings]
#
# Needs project, zone, name and machine type. A2/A3/G2 machine types come with their GPUs;
# N1 types need --gpu-type (e.g. nvidia-tesla-t4). Runs:
#   gcloud compute instances create NAME --project=PROJECT --zone=ZONE --machine-type=MACHINE_TYPE[ --accelerator=type=GPU_TYPE,count=GPU_COUNT] --image-family=IMAGE_FAMILY --image-project=deeplearning-platform-release --boot-disk-size=200GB --maintenance-policy=TERMINATE --scopes=cloud-platform --metadata=install-nvidia-driver=True[ --provisioning-model=SPOT --instance-termination-action=STOP]
set -euo pipefail
# shellcheck source=../common.sh
source "$(dirname "$0")/../common.sh"
parse_flags "$@"
require PROJECT ZONE NAME MACHINE_TYPE

options=()
if [[ -n "${GPU_TYPE}" ]]; then
  options+=(--accelerator="type=${GPU_TYPE},count=${GPU_COUNT}")
elif [[ "${MACHINE_TYPE}" == n1-* ]]; then
  die "${MACHINE_TYPE} has no GPU of its own: set PRS_GPU_TYPE or pass --gpu-type=... (e.g. nvidia-tesla-t4)"
fi
options+=(
  --image-family="${IMAGE_FAMILY}" --image-project=deeplearning-platform-release
  --boot-disk-size=200GB --maintenance-policy=TERMINATE
  # The VM writes the run to the bucket with its service account.
  --scopes=cloud-platform --metadata=install-nvidia-driver=True
)
if is_true "${SPOT}"; then
  options+=(--provisioning-model=SPOT --instance-termination-action=STOP)
fi
run gcloud compute instances create "${NAME}" --project="${PROJECT}" --zone="${ZONE}" \
  --machine-type="${MACHINE_TYPE}" "${options[@]}"
