#!/usr/bin/env bash
# Create the TPU VM (one host, e.g. v4-8) or slice (several hosts, e.g. v4-32): on demand,
# spot (--spot), or through a queued resource that waits for capacity (--queued).
#
#   launch/tpu/create.sh [--spot] [--queued] [--dry-run] [--project=... --zone=... ...]
#
# Needs project, zone, name, accelerator type and runtime version (PRS_* variables or flags;
# see launch/common.sh). Runs:
#   gcloud compute tpus tpu-vm create NAME --project=PROJECT --zone=ZONE --accelerator-type=ACCELERATOR_TYPE --version=RUNTIME_VERSION[ --spot]
# or, with --queued, and then every 30 s until the resource is ACTIVE:
#   gcloud compute tpus queued-resources create NAME --node-id=NAME --project=PROJECT --zone=ZONE --accelerator-type=ACCELERATOR_TYPE --runtime-version=RUNTIME_VERSION[ --spot]
#   gcloud compute tpus queued-resources describe NAME --project=PROJECT --zone=ZONE '--format=value(state.state)'
set -euo pipefail
# shellcheck source=../common.sh
source "$(dirname "$0")/../common.sh"
parse_flags "$@"
require PROJECT ZONE NAME ACCELERATOR_TYPE RUNTIME_VERSION

spot=()
if is_true "${SPOT}"; then
  spot=(--spot)
fi
where=(--project="${PROJECT}" --zone="${ZONE}")

if ! is_true "${QUEUED}"; then
  run gcloud compute tpus tpu-vm create "${NAME}" "${where[@]}" \
    --accelerator-type="${ACCELERATOR_TYPE}" --version="${RUNTIME_VERSION}" ${spot[@]+"${spot[@]}"}
  exit 0
fi

run gcloud compute tpus queued-resources create "${NAME}" --node-id="${NAME}" "${where[@]}" \
  --accelerator-type="${ACCELERATOR_TYPE}" --runtime-version="${RUNTIME_VERSION}" ${spot[@]+"${spot[@]}"}
describe=(gcloud compute tpus queued-resources describe "${NAME}" "${where[@]}" --format='value(state.state)')
if is_true "${DRY_RUN}"; then
  run "${describe[@]}"
  exit 0
fi
while true; do
  state="$(run "${describe[@]}")"
  case "${state}" in
    ACTIVE) echo "${NAME} is ACTIVE: next, launch/tpu/setup.sh" >&2; break ;;
    FAILED | SUSPENDED) die "queued resource ${NAME} is ${state}; see: ${describe[*]}" ;;
  esac
  echo "${NAME} is ${state:-not listed yet}; checking again in ${PRS_POLL_S:-30} s" >&2
  sleep "${PRS_POLL_S:-30}"
done
