#!/usr/bin/env bash
# Delete the TPU VM or slice (and its queued resource, with --queued). The workdir on gs:// is
# kept; a workdir on the VM's disk is lost, so run copy.sh first.
#
#   launch/tpu/delete.sh [--queued] [--dry-run] [settings]
#
# Needs project, zone and name. Runs:
#   gcloud compute tpus tpu-vm delete NAME --project=PROJECT --zone=ZONE --quiet
# or, with --queued:
#   gcloud compute tpus queued-resources delete NAME --project=PROJECT --zone=ZONE --force --quiet
set -euo pipefail
# shellcheck source=../common.sh
source "$(dirname "$0")/../common.sh"
parse_flags "$@"
require PROJECT ZONE NAME

if is_true "${QUEUED}"; then
  run gcloud compute tpus queued-resources delete "${NAME}" --project="${PROJECT}" --zone="${ZONE}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "${NAME}" --project="${PROJECT}" --zone="${ZONE}" --quiet
fi
