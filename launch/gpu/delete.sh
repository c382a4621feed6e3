#!/usr/bin/env bash
# Delete the GPU VM and its disk. The gs:// workdir is kept (run copy.sh for a local copy).
#
#   launch/gpu/delete.sh [--dry-run] [settings]
#
# Needs project, zone and name. Runs:
#   gcloud compute instances delete NAME --project=PROJECT --zone=ZONE --quiet
set -euo pipefail
# shellcheck source=../common.sh
source "$(dirname "$0")/../common.sh"
parse_flags "$@"
require PROJECT ZONE NAME

run gcloud compute instances delete "${NAME}" --project="${PROJECT}" --zone="${ZONE}" --quiet
