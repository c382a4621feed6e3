r"""Run a grid of experiments one after another, or print their launch commands for many machines.

  python -m prs_jax.sweep configs/sweeps/data_ratios.py --root ~/runs/ratios --dry_run
  python -m prs_jax.sweep configs/sweeps/data_ratios.py:runlocal --root /tmp/ratios
  python -m prs_jax.sweep configs/sweeps/uniform_switch.py --root ~/runs/switch --shard 0/4
  python -m prs_jax.sweep configs/sweeps/data_ratios.py:dataset=imagenet --root gs://b/ratios \
      --template 'launch/tpu/train.sh {name} "{command}"' -- --config.data.data_dir=gs://b/tfds

A sweep file defines `get_sweep(arg) -> list[Run]`; each Run is (name, config, overrides):
`config` is the `--config` value of prs_jax.main (a path relative to the repository root, with
its ':arg'), `overrides` a dict of `--config.FIELD=VALUE` flags. Every run gets the workdir
ROOT/NAME; flags after `--` are added to every command.

Modes: run (default) executes the commands in order as subprocesses from the repository root,
goes on after a failure, writes ROOT/report_SWEEP.{md,csv,png} and ROOT/report_SWEEP_curves.*
at the end over every run of the sweep that has a workdir (SWEEP: the sweep file's stem; the
report of prs_jax.report), and exits non-zero if a run failed; a rerun resumes each run from
its workdir and skips the runs that finished with the same config (their WORKDIR/finished.json).
`--dry_run` prints the commands, one per line; `--template` prints each formatted with
{command}, {name}, {workdir}, {index} (e.g. wrapped in an ssh or a launch script). `--shard I/N`
keeps runs I, I+N, I+2N, ... so N machines can each run a share of the grid.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from prs_jax import cli
from prs_jax.errors import UserError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


class SweepError(UserError, ValueError):
    """A sweep file, its runs or the command line name something that does not exist."""


class UnknownFieldError(UserError, KeyError):
    """An override names a field the run's config does not have."""

    def __str__(self) -> str:
        return str(self.args[0])  # KeyError would quote the whole message


class Run(NamedTuple):
    """One experiment of a sweep: prs_jax.main --config CONFIG --workdir ROOT/NAME OVERRIDES."""

    name: str
    config: str  # 'configs/cifar100.py:prs,epochs=300', relative to the repository root
    overrides: Mapping[str, Any] = {}  # 'data.train_fraction' -> 0.1


def _load_module(path: str | os.PathLike[str]):
    path = pathlib.Path(path)
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path
    if not path.is_file():
        raise SweepError(f"no file {path}: give a file relative to the repository root")
    spec = importlib.util.spec_from_file_location(f"_prs_jax_sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _split_arg(spec: str) -> tuple[str, str | None]:
    path, sep, arg = spec.partition(":")
    return path, (arg if sep else None)


def load_config(config: str, overrides: Mapping[str, Any] | None = None):
    """The ConfigDict that `--config CONFIG --config.K=V ...` gives prs_jax.main."""
    path, arg = _split_arg(config)
    result = _load_module(path).get_config(arg)
    for key, value in (overrides or {}).items():
        *parents, leaf = key.split(".")
        node = result
        for parent in parents:
            node = node[parent]
        if leaf not in node:
            raise UnknownFieldError(f"override {key!r}: the config {config!r} has no field {key!r}")
        node[leaf] = value
    return result


def load_sweep(spec: str) -> list[Run]:
    """The runs of 'SWEEP_FILE[:ARG]', checked: unique names, configs that load."""
    path, arg = _split_arg(spec)
    runs = [Run(*r) for r in _load_module(path).get_sweep(arg)]  # plain tuples welcome
    names = [r.name for r in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SweepError(f"sweep {spec!r} repeats run names {duplicates}: make them unique")
    for run in runs:
        load_config(run.config, run.overrides)  # a typo fails now, not hours into the sweep
    return runs


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def command(
    run: Run, root: str, extra_args: Sequence[str] = (), python: str = "python"
) -> list[str]:
    """argv of one run: python -m prs_jax.main --config=... --workdir=ROOT/NAME --config.K=V ..."""
    argv = [
        python,
        "-m",
        "prs_jax.main",
        f"--config={run.config}",
        f"--workdir={root.rstrip('/')}/{run.name}",
    ]
    argv += [f"--config.{key}={_flag_value(value)}" for key, value in run.overrides.items()]
    return argv + list(extra_args)


def report_prefix(spec: str) -> str:
    """The sweep's report name in its root, report_<sweep file's stem>: sweeps that share a root
    (the cifar10 curves and study) keep a report each."""
    return "report_" + pathlib.Path(_split_arg(spec)[0]).stem


def select_shard(runs: Sequence[Run], shard: str | None) -> list[Run]:
    """Runs i, i + n, i + 2n, ... for shard 'i/n'; all runs for None."""
    if not shard:
        return list(runs)
    index, _, count = shard.partition("/")
    index, count = int(index), int(count)
    if not 0 <= index < count:
        raise SweepError(f"--shard={shard}: need I/N with 0 <= I < N")
    return list(runs)[index::count]


def finished_runs(runs: Sequence[Run], root: str, extra_args: Sequence[str] = ()) -> dict[str, int]:
    """{name: final step} of the runs whose workdir records that they finished with the config
    this sweep would give them; empty when flags after `--` may change a config (`--config...`)."""
    if any(arg.startswith("--config") for arg in extra_args):
        return {}
    from prs_jax.training import completion  # pylint: disable=import-outside-toplevel

    done = {}
    for run in runs:
        config = load_config(run.config, run.overrides).to_dict()
        step = completion.finished_step(f"{root.rstrip('/')}/{run.name}", config)
        if step is not None:
            done[run.name] = step
    return done


def run_all(
    commands: Sequence[tuple[str, list[str]]],
    runner: Callable[..., subprocess.CompletedProcess] = subprocess.run,
    finished: Mapping[str, int] | None = None,
) -> list[str]:
    """Run (name, argv) pairs in order from the repository root, except those in `finished`
    ({name: final step}); the names of those that failed."""
    failed = []
    for index, (name, argv) in enumerate(commands):
        if finished and name in finished:
            print(f"[{index + 1}/{len(commands)}] {name}: finished at step {finished[name]}")
            continue
        print(f"[{index + 1}/{len(commands)}] {name}: {shlex.join(argv)}", flush=True)
        start = time.time()
        returncode = runner(argv, cwd=REPO_ROOT, check=False).returncode
        minutes = (time.time() - start) / 60
        status = "done" if returncode == 0 else f"FAILED (exit {returncode})"
        print(f"[{index + 1}/{len(commands)}] {name}: {status} after {minutes:.1f} min", flush=True)
        if returncode != 0:
            failed.append(name)
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra_args = []
    if "--" in argv:
        extra_args = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(
        prog="python -m prs_jax.sweep",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "sweep", help="sweep file with get_sweep(arg), e.g. configs/sweeps/data_ratios.py:runlocal"
    )
    parser.add_argument("--root", required=True, help="each run's workdir is ROOT/NAME")
    parser.add_argument("--dry_run", action="store_true", help="print the commands; run nothing")
    parser.add_argument(
        "--template", help="print each command formatted with {command} {name} {workdir} {index}"
    )
    parser.add_argument("--shard", help="I/N: only runs I, I+N, ... (one of N machines)")
    parser.add_argument("--only", help="comma-separated run names to keep")
    parser.add_argument(
        "--python", help="interpreter of the runs (default: this one, or 'python' when printing)"
    )
    args = parser.parse_args(argv)
    with cli.exit_on_user_error("prs_jax.sweep"):
        return _run(args, parser, extra_args)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser, extra_args: list[str]) -> int:
    runs = sweep_runs = select_shard(load_sweep(args.sweep), args.shard)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {r.name for r in runs}
        if unknown:
            parser.error(f"--only names no run of this sweep (or shard): {sorted(unknown)}")
        runs = [r for r in runs if r.name in wanted]

    printing = args.dry_run or args.template
    root = args.root
    if not printing and "://" not in root:
        root = os.path.abspath(os.path.expanduser(root))  # the runs start in the repository root
    python = args.python or ("python" if printing else sys.executable)
    commands = [(r.name, command(r, root, extra_args, python)) for r in runs]
    if printing:
        for index, (name, cmd) in enumerate(commands):
            line = shlex.join(cmd)
            if args.template:
                line = args.template.format(
                    command=line, name=name, workdir=f"{root.rstrip('/')}/{name}", index=index
                )
            print(line)
        return 0

    failed = run_all(commands, finished=finished_runs(runs, root, extra_args))
    from prs_jax.analysis import study  # pylint: disable=import-outside-toplevel

    # Every run of the sweep that has a workdir, not only those of --only: the sweep's report.
    workdirs = [
        f"{root}/{r.name}" for r in sweep_runs if os.path.exists(f"{root}/{r.name}/config.json")
    ]
    if workdirs:
        written = study.write_study_report(workdirs, os.path.join(root, report_prefix(args.sweep)))
        print("Report: " + ", ".join(written))
    if failed:
        print(f"{len(failed)} of {len(runs)} runs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
