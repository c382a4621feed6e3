# shellcheck shell=bash
# The settings are read by the scripts that source this file.
# shellcheck disable=SC2034
# Sourced by the scripts in launch/tpu/ and launch/gpu/: settings, --dry-run, clear errors.
#
# Every setting comes from an environment variable or the matching flag (the flag wins):
#
#   PRS_PROJECT           --project            Google Cloud project
#   PRS_ZONE              --zone               zone of the VM, e.g. us-central2-b
#   PRS_NAME              --name               name of the TPU VM / queued resource / GPU VM
#   PRS_ACCELERATOR_TYPE  --accelerator-type   TPU type, e.g. v4-8 (one host), v4-32 (4 hosts)
#   PRS_RUNTIME_VERSION   --runtime-version    TPU VM software, e.g. tpu-ubuntu2204-base
#   PRS_SPOT=1            --spot               spot capacity (cheaper; may be preempted)
#   PRS_QUEUED=1          --queued             TPU through a queued resource (waits for capacity)
#   PRS_MACHINE_TYPE      --machine-type       GPU VM type, e.g. g2-standard-8 (1 L4), a2-highgpu-1g
#   PRS_GPU_TYPE          --gpu-type           GPU for N1 machine types, e.g. nvidia-tesla-t4
#   PRS_GPU_COUNT         --gpu-count          how many of them (default 1)
#   PRS_IMAGE_FAMILY      --image-family       GPU VM image (default common-cu128-ubuntu-2204-nvidia-570)
#   PRS_WORKDIR           --workdir            the run's directory, gs://BUCKET/PATH
#   PRS_TFDS_DATA_DIR     --tfds-data-dir      TFDS data directory, e.g. gs://BUCKET/tensorflow_datasets
#   PRS_CONFIG            --config             config file and argument (default configs/cifar100.py)
#   PRS_REPO              --repo               git URL the VMs install from (default: origin's URL)
#   PRS_REF               --ref                branch, tag or commit to install (default main)
#   PRS_DEST              --dest               local folder for copied results (default results/NAME)
#   PRS_WORKER            --worker             TPU worker(s) for logs: 0 (default), 3, or all
#   PRS_DRY_RUN=1         --dry-run            print every command instead of running it
#
# Arguments after `--` go to `python -m prs_jax.main` unchanged (train.sh only); a --config
# among them replaces the --config setting.

# Works with bash >= 3.2 (macOS's own) as well as Linux's bash 5.
LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "${LAUNCH_DIR}")"
# Where the VMs keep the worker script (in the ssh user's home directory).
REMOTE_WORKER="prs_jax_worker.sh"

PROJECT="${PRS_PROJECT:-}"
ZONE="${PRS_ZONE:-}"
NAME="${PRS_NAME:-}"
ACCELERATOR_TYPE="${PRS_ACCELERATOR_TYPE:-}"
RUNTIME_VERSION="${PRS_RUNTIME_VERSION:-}"
SPOT="${PRS_SPOT:-0}"
QUEUED="${PRS_QUEUED:-0}"
MACHINE_TYPE="${PRS_MACHINE_TYPE:-}"
GPU_TYPE="${PRS_GPU_TYPE:-}"
GPU_COUNT="${PRS_GPU_COUNT:-1}"
IMAGE_FAMILY="${PRS_IMAGE_FAMILY:-common-cu128-ubuntu-2204-nvidia-570}"
WORKDIR="${PRS_WORKDIR:-}"
TFDS_DATA_DIR="${PRS_TFDS_DATA_DIR:-}"
CONFIG="${PRS_CONFIG:-configs/cifar100.py}"
REPO="${PRS_REPO:-}"
REF="${PRS_REF:-main}"
DEST="${PRS_DEST:-}"
WORKER="${PRS_WORKER:-0}"
DRY_RUN="${PRS_DRY_RUN:-0}"
MAIN_ARGS=()

die() {
  echo "error: $*" >&2
  exit 2
}

# The comment block at the top of the calling script, without the '#'.
usage() {
  awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0"
}

# parse_flags "$@": set the settings above from flags; `--` ends them.
parse_flags() {
  while (($#)); do
    local flag="$1" value=""
    if [[ "${flag}" == --*=* ]]; then
      value="${flag#*=}"
      flag="${flag%%=*}"
    fi
    case "${flag}" in
      -h | --help) usage; exit 0 ;;
      --dry-run) DRY_RUN=1; shift; continue ;;
      --spot) SPOT=1; shift; continue ;;
      --queued) QUEUED=1; shift; continue ;;
      --) shift; MAIN_ARGS=("$@"); return ;;
    esac
    if [[ "$1" != *=* ]]; then
      (($# >= 2)) || die "${flag} needs a value"
      value="$2"
      shift
    fi
    shift
    case "${flag}" in
      --project) PROJECT="${value}" ;;
      --zone) ZONE="${value}" ;;
      --name) NAME="${value}" ;;
      --accelerator-type) ACCELERATOR_TYPE="${value}" ;;
      --runtime-version) RUNTIME_VERSION="${value}" ;;
      --machine-type) MACHINE_TYPE="${value}" ;;
      --gpu-type) GPU_TYPE="${value}" ;;
      --gpu-count) GPU_COUNT="${value}" ;;
      --image-family) IMAGE_FAMILY="${value}" ;;
      --workdir) WORKDIR="${value}" ;;
      --tfds-data-dir) TFDS_DATA_DIR="${value}" ;;
      --config) CONFIG="${value}" ;;
      --repo) REPO="${value}" ;;
      --ref) REF="${value}" ;;
      --dest) DEST="${value}" ;;
      --worker) WORKER="${value}" ;;
      *) die "unknown flag ${flag} (see $0 --help)" ;;
    esac
  done
}

# require SETTING...: stop with a message naming the variable and the flag of each missing one.
require() {
  local setting name flag hint
  for setting in "$@"; do
    [[ -n "${!setting}" ]] && continue
    name="$(tr '[:upper:]' '[:lower:]' <<<"${setting}")"  # (bash 3.2 on macOS has no ${x,,})
    flag="--${name//_/-}"
    case "${setting}" in
      PROJECT) hint="your Google Cloud project id" ;;
      ZONE) hint="a zone that has the accelerator, e.g. us-central2-b for TPU v4" ;;
      NAME) hint="a name for the VM, e.g. prs-v4-8" ;;
      ACCELERATOR_TYPE) hint="e.g. v4-8 (one host) or v4-32 (four hosts), v5litepod-8, v6e-8" ;;
      RUNTIME_VERSION) hint="e.g. tpu-ubuntu2204-base (v4), v2-alpha-tpuv5-lite (v5e), v2-alpha-tpuv6e (v6e)" ;;
      MACHINE_TYPE) hint="e.g. g2-standard-8 (one L4), a2-highgpu-1g (one A100), n1-standard-8 with --gpu-type" ;;
      WORKDIR) hint="a gs://BUCKET/PATH folder for checkpoints and metrics" ;;
      TFDS_DATA_DIR) hint="e.g. gs://BUCKET/tensorflow_datasets; TFDS downloads and prepares data there" ;;
      REPO) hint="the git URL the VMs clone, e.g. https://github.com/ORG/prs_jax" ;;
      *) hint="" ;;
    esac
    die "${name} is not set: set PRS_${setting} or pass ${flag}=...${hint:+ (${hint})}"
  done
}

# require_gs_workdir: the workdir must be a bucket path, which every worker and the laptop see.
require_gs_workdir() {
  require WORKDIR
  [[ "${WORKDIR}" == gs://* ]] ||
    die "workdir ${WORKDIR} is not on gs://: use gs://BUCKET/PATH, which every VM and this machine can read"
}

# default_repo: the repository URL, by default this checkout's origin remote.
default_repo() {
  if [[ -z "${REPO}" ]]; then
    REPO="$(git -C "${REPO_ROOT}" remote get-url origin 2>/dev/null || true)"
    # The VMs have no GitHub ssh key: clone over https.
    if [[ "${REPO}" == git@github.com:* ]]; then
      REPO="https://github.com/${REPO#git@github.com:}"
    fi
  fi
  require REPO
}

# quote WORD: the word as a shell would need it typed (plain when safe, else single-quoted).
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# shell_words WORD...: the words quoted and joined with spaces, for a remote --command.
shell_words() {
  local word out=()
  for word in "$@"; do
    out+=("$(quote "${word}")")
  done
  printf '%s' "${out[*]}"
}

# run COMMAND...: run it, or with --dry-run print it (one line, quoted so it can be pasted).
run() {
  if is_true "${DRY_RUN}"; then
    shell_words "$@"
    echo
  else
    echo "+ $(shell_words "$@")" >&2
    "$@"
  fi
}

is_true() {
  [[ "$1" == 1 || "$1" == true || "$1" == yes ]]
}

# tpu_hosts ACCELERATOR_TYPE: how many VMs (workers) the slice has; 0 when the type is unknown.
tpu_hosts() {
  local family="${1%-*}" size="${1##*-}"
  if [[ ! "${size}" =~ ^[0-9]+$ ]]; then
    echo 0
    return
  fi
  case "${family}" in
    # The size counts TensorCores: 8 per host (4 chips of 2 cores).
    v2 | v3 | v4 | v5p) echo $((size > 8 ? size / 8 : 1)) ;;
    # The size counts chips: up to 8 on one host, else 4 per host.
    v5litepod | v5e | v6e) echo $((size > 8 ? size / 4 : 1)) ;;
    *) echo 0 ;;
  esac
}

# set_main_flags: MAIN_FLAGS=(--config=CONFIG, unless the flags after `--` have their own; those flags).
set_main_flags() {
  local flag own_config=0
  for flag in ${MAIN_ARGS[@]+"${MAIN_ARGS[@]}"}; do
    case "${flag}" in
      --config | --config=*) own_config=1 ;;
      --workdir | --workdir=*) die "give the workdir with --workdir or PRS_WORKDIR, before --" ;;
    esac
  done
  MAIN_FLAGS=()
  if ((own_config == 0)); then
    MAIN_FLAGS+=("--config=${CONFIG}")
  fi
  MAIN_FLAGS+=(${MAIN_ARGS[@]+"${MAIN_ARGS[@]}"})
}
