#!/usr/bin/env bash
# Runs ON each TPU worker or GPU VM (launch/*/setup.sh copies it to ~/prs_jax_worker.sh): the
# idempotent bootstrap, and the training process with its log. Everything lives in $PRS_HOME
# (default ~/prs_jax): venv/, src/ (the git checkout), train.log, train.pid, train.exit.
#
#   prs_jax_worker.sh setup --repo=URL --ref=REF --accelerator=tpu|gpu|cpu
#       Python >= 3.11 (apt's python3.11 when the image has none), a venv, the repository at
#       REF, and `pip install "jax[tpu]" -e src` (jax[cuda12] for gpu). Safe to rerun: an
#       existing venv and checkout are reused, and pip runs only when the commit changed.
#   prs_jax_worker.sh start [--detach=nohup|tmux] [--workdir=DIR] [--tfds-data-dir=DIR]
#                           [--sync-every-s=N] -- MAIN_ARGS...
#       Starts `python -m prs_jax.main --workdir=DIR MAIN_ARGS...` in the background (nohup, or
#       a tmux session named prs_jax) and returns; refuses while a run is going. With
#       --sync-every-s=N and a gs:// workdir the run writes to a local copy under
#       $PRS_HOME/workdirs/ (first filled from the bucket, to resume) and syncs it to the bucket
#       every N seconds and at the end.
#   prs_jax_worker.sh run ...        the same in the foreground
#   prs_jax_worker.sh logs [--lines=N]    follow train.log
#   prs_jax_worker.sh status         running or not, and the exit code of the last run
#   prs_jax_worker.sh stop           SIGTERM to the run: it saves a checkpoint and exits
set -euo pipefail

PRS_HOME="${PRS_HOME:-${HOME}/prs_jax}"
VENV="${PRS_HOME}/venv"
SRC="${PRS_HOME}/src"
LOG="${PRS_HOME}/train.log"
PID_FILE="${PRS_HOME}/train.pid"
EXIT_FILE="${PRS_HOME}/train.exit"
SESSION="prs_jax"
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
# The jax range of setup.cfg, with the accelerator's extra.
JAX_VERSIONS=">=0.10,<0.13"

die() {
  echo "error: $*" >&2
  exit 2
}

say() {
  echo "[$(hostname)] $*"
}

# The newest python >= 3.11 on PATH.
find_python() {
  local candidate
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "${candidate}" >/dev/null &&
      "${candidate}" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "${candidate}"
      return
    fi
  done
  return 1
}

# A fresh VM's unattended upgrades hold the dpkg lock for a while: wait for it.
apt_install() {
  sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
  sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$@"
}

# PYTHON: a python >= 3.11 with venv support, from apt when the image has none.
ensure_python() {
  if ! PYTHON="$(find_python)"; then
    say "installing python3.11 from apt"
    apt_install python3.11 python3.11-venv
    PYTHON="python3.11"
  fi
  if ! "${PYTHON}" -c 'import ensurepip' 2>/dev/null; then
    # Debian and Ubuntu split venv support into its own package.
    local version
    version="$("${PYTHON}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    apt_install "python${version}-venv"
  fi
}

setup() {
  local repo="" ref="main" accelerator=""
  for arg in "$@"; do
    case "${arg}" in
      --repo=*) repo="${arg#*=}" ;;
      --ref=*) ref="${arg#*=}" ;;
      --accelerator=*) accelerator="${arg#*=}" ;;
      *) die "setup: unknown argument ${arg}" ;;
    esac
  done
  [[ -n "${repo}" ]] || die "setup: --repo=URL is missing"
  local extra
  case "${accelerator}" in
    tpu) extra="tpu" ;;
    gpu) extra="cuda12" ;;
    cpu) extra="" ;;
    *) die "setup: --accelerator must be tpu, gpu or cpu, not '${accelerator}'" ;;
  esac
  mkdir -p "${PRS_HOME}"

  if [[ "${accelerator}" == gpu ]]; then
    # The image installs the NVIDIA driver on first boot (install-nvidia-driver=True): wait.
    local waited=0
    until nvidia-smi >/dev/null 2>&1; do
      ((waited < 900)) || die "no working nvidia-smi after 15 minutes: is the driver installed?"
      say "waiting for the NVIDIA driver"
      sleep 30
      waited=$((waited + 30))
    done
  fi

  if [[ ! -x "${VENV}/bin/python" ]]; then
    ensure_python
    say "creating ${VENV} with ${PYTHON}"
    "${PYTHON}" -m venv "${VENV}"
  fi

  if [[ ! -d "${SRC}/.git" ]]; then
    git clone --quiet "${repo}" "${SRC}"
  fi
  git -C "${SRC}" remote set-url origin "${repo}"
  git -C "${SRC}" fetch --quiet origin "${ref}"
  git -C "${SRC}" checkout --quiet --force --detach FETCH_HEAD
  local commit stamp
  commit="$(git -C "${SRC}" rev-parse HEAD)"
  stamp="${accelerator} ${commit}"

  if [[ "$(cat "${PRS_HOME}/installed" 2>/dev/null || true)" != "${stamp}" ]]; then
    say "installing prs_jax at ${commit} (jax${extra:+[${extra}]})"
    "${VENV}/bin/python" -m pip install --quiet --upgrade pip
    "${VENV}/bin/python" -m pip install --quiet "jax${extra:+[${extra}]}${JAX_VERSIONS}" -e "${SRC}"
    echo "${stamp}" >"${PRS_HOME}/installed"
  fi
  # Imports only: touching the TPU here would hold it, and on a slice wait for the others.
  say "ready: $("${VENV}/bin/python" -c 'import jax, prs_jax; print("jax", jax.__version__)') at ${commit}"
}

running_pid() {
  local pid
  pid="$(cat "${PID_FILE}" 2>/dev/null || true)"
  if [[ -n "${pid}" ]] && kill -0 "${pid}" 2>/dev/null; then
    echo "${pid}"
  fi
}

sync_up() {
  local local_dir="$1" bucket_dir="$2"
  gcloud storage rsync --recursive --quiet "${local_dir}" "${bucket_dir}" ||
    say "warning: sync to ${bucket_dir} failed; retrying later"
}

# run [--workdir=DIR] [--tfds-data-dir=DIR] [--sync-every-s=N] -- MAIN_ARGS...
run() {
  local workdir="" tfds_data_dir="" sync_every_s=0
  while (($#)); do
    case "$1" in
      --workdir=*) workdir="${1#*=}" ;;
      --tfds-data-dir=*) tfds_data_dir="${1#*=}" ;;
      --sync-every-s=*) sync_every_s="${1#*=}" ;;
      --detach=*) ;;
      --) shift; break ;;
      *) die "run: unknown argument $1 (main's flags go after --)" ;;
    esac
    shift
  done
  [[ -n "${workdir}" ]] || die "run: --workdir=DIR is missing"
  [[ -x "${VENV}/bin/python" ]] || die "no ${VENV}: run '$0 setup' first"

  local train_dir="${workdir}"
  if ((sync_every_s > 0)) && [[ "${workdir}" == gs://* ]]; then
    train_dir="${PRS_HOME}/workdirs/${workdir#gs://}"
    mkdir -p "${train_dir}"
    # Resume where the bucket is (a new VM after a preemption starts from its checkpoints).
    if gcloud storage ls "${workdir}" >/dev/null 2>&1; then
      say "fetching ${workdir} to resume"
      gcloud storage rsync --recursive --quiet "${workdir}" "${train_dir}"
    fi
  fi

  if [[ -n "${tfds_data_dir}" ]]; then
    export TFDS_DATA_DIR="${tfds_data_dir}"
  fi
  rm -f "${EXIT_FILE}"
  cd "${SRC}"
  say "starting: python -m prs_jax.main --workdir=${train_dir} $*" | tee -a "${LOG}"
  "${VENV}/bin/python" -m prs_jax.main --workdir="${train_dir}" "$@" > >(tee -a "${LOG}") 2>&1 &
  local pid=$!
  echo "${pid}" >"${PID_FILE}"

  local syncer=""
  if [[ "${train_dir}" != "${workdir}" ]]; then
    (
      while sleep "${sync_every_s}"; do
        sync_up "${train_dir}" "${workdir}"
      done
    ) &
    syncer=$!
  fi

  local status=0
  wait "${pid}" || status=$?
  if [[ -n "${syncer}" ]]; then
    kill "${syncer}" 2>/dev/null || true
    sync_up "${train_dir}" "${workdir}"
    gcloud storage cp --quiet "${LOG}" "${workdir}/logs/$(hostname).log" || true
  fi
  echo "${status}" >"${EXIT_FILE}"
  rm -f "${PID_FILE}"
  say "finished with exit code ${status}" | tee -a "${LOG}"
  return "${status}"
}

start() {
  local detach="nohup" arg
  for arg in "$@"; do
    [[ "${arg}" == -- ]] && break
    [[ "${arg}" == --detach=* ]] && detach="${arg#*=}"
  done
  local pid
  pid="$(running_pid)"
  [[ -z "${pid}" ]] || die "a run is already going (pid ${pid}); '$0 stop' ends it"
  mkdir -p "${PRS_HOME}"
  case "${detach}" in
    nohup)
      setsid nohup bash "${SELF}" run "$@" >/dev/null 2>&1 </dev/null &
      say "started in the background; log: ${LOG}"
      ;;
    tmux)
      if tmux has-session -t "${SESSION}" 2>/dev/null; then
        tmux kill-session -t "${SESSION}"  # the shell of a finished run
      fi
      local command
      printf -v command '%q ' bash "${SELF}" run "$@"
      # The shell stays open after the run so its last lines can be read with tmux attach.
      tmux new-session -d -s "${SESSION}" "${command}; exec bash"
      say "started in tmux session ${SESSION} (tmux attach -t ${SESSION}); log: ${LOG}"
      ;;
    *) die "start: --detach must be nohup or tmux, not '${detach}'" ;;
  esac
}

logs() {
  local lines=100 arg
  for arg in "$@"; do
    case "${arg}" in
      --lines=*) lines="${arg#*=}" ;;
      *) die "logs: unknown argument ${arg}" ;;
    esac
  done
  touch "${LOG}"
  tail -n "${lines}" -F "${LOG}"
}

status() {
  local pid
  pid="$(running_pid)"
  if [[ -n "${pid}" ]]; then
    say "running (pid ${pid})"
  elif [[ -f "${EXIT_FILE}" ]]; then
    say "not running; the last run exited with code $(cat "${EXIT_FILE}")"
  else
    say "not running"
  fi
}

stop() {
  local pid
  pid="$(running_pid)"
  if [[ -z "${pid}" ]]; then
    say "no run is going"
    return
  fi
  # The train loop saves a checkpoint at the current step on SIGTERM, then exits.
  kill -TERM "${pid}"
  say "sent SIGTERM to pid ${pid}"
}

command="${1:-}"
(($#)) && shift
case "${command}" in
  setup) setup "$@" ;;
  start) start "$@" ;;
  run) run "$@" ;;
  logs) logs "$@" ;;
  status) status "$@" ;;
  stop) stop "$@" ;;
  -h | --help | "") awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0" ;;
  *) die "unknown command '${command}' (setup, start, run, logs, status or stop)" ;;
esac
