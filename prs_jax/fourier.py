r"""Relative log-amplitude spectra of a run's feature maps (Park & Kim 2022; prs_jax.analysis).

python -m prs_jax.fourier --workdir DIR [--step N] [--num_images N]
    writes DIR/fourier/step_<N>/{fourier.npz, spectra.png, high_frequency.png}
python -m prs_jax.fourier --compare RUN [RUN ...] --output_dir OUT
    RUN is a workdir (analysed as above) or a fourier.npz; writes
    OUT/high_frequency_compare.png  the high-frequency value against normalised depth, per run
    OUT/high_frequency_compare.csv  one row per run: label, workdir, checkpoint step, schedule,
                                    switch point (fraction of the run; empty without GPSA
                                    layers), the mean high-frequency value over blocks, final
                                    and best validation top-1 (from WORKDIR/metrics.jsonl)
    OUT/high_frequency_compare.md   the same as a Markdown table (top-1 in %)
    OUT/interpolation.png           with two or more runs that have a switch point: (a) the
                                    mean high-frequency value and (b) the final top-1 against
                                    it, ResNet and DeiT as horizontal lines
    A fourier.npz at its default place, WORKDIR/fourier/step_<N>/, has WORKDIR's accuracies;
    one elsewhere has none, or with --report CSV [CSV ...] (prs_jax.report's PREFIX.csv) its
    run's row there: how results/ redraws runs whose workdirs are gone.
    prs_jax.analysis.interpolation defines the switch point (ConViT 0, conv "never" = 1, PRS
    the mean over its GPSA layers) and spectra.mean_high_frequency the value.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from absl import logging
from etils import epath

from prs_jax import cli
from prs_jax.analysis import interpolation
from prs_jax.analysis.fourier import (
    COMPARE_PNG,
    FourierResult,
    analyse_run,
    plot_high_frequency,
    write_outputs,
)
from prs_jax.errors import UserError


def default_output_dir(workdir: str, step: int) -> str:
    return os.path.join(workdir, "fourier", f"step_{step}")


def npz_workdir(npz_path: str) -> str | None:
    """The run of a fourier.npz at its default place (WORKDIR/fourier/step_<N>/, a WORKDIR with
    config.json); None for one elsewhere."""
    path = epath.Path(npz_path)
    step_dir = path.parent
    workdir = step_dir.parent.parent
    at_default_place = step_dir.name.startswith("step_") and step_dir.parent.name == "fourier"
    return str(workdir) if at_default_place and (workdir / "config.json").exists() else None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m prs_jax.fourier",
        description="Relative log-amplitude spectra of a run's feature maps (Park & Kim 2022).",
    )
    parser.add_argument("--workdir", help="a training run's workdir (with checkpoints/)")
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="RUN",
        help="workdirs or fourier.npz files to draw on one depth plot (needs --output_dir)",
    )
    parser.add_argument(
        "--report",
        nargs="+",
        metavar="CSV",
        help="prs_jax.report CSVs with the accuracies of compared fourier.npz files away from "
        "their workdirs (matched by run name; with --compare)",
    )
    parser.add_argument(
        "--step", type=int, help="checkpoint step, of every workdir compared (default: the latest)"
    )
    parser.add_argument(
        "--num_images",
        type=int,
        default=1024,
        help="evaluation images to average over (default 1024)",
    )
    parser.add_argument(
        "--batch_size",
        type=int,
        default=64,
        help="images per forward pass; bounds the memory (default 64)",
    )
    parser.add_argument(
        "--output_dir",
        help="where to write (default with --workdir: WORKDIR/fourier/step_<N>)",
    )
    args = parser.parse_args(argv)
    if bool(args.workdir) == bool(args.compare):
        parser.error("give exactly one of --workdir DIR and --compare RUN [RUN ...]")
    if args.compare and not args.output_dir:
        parser.error("--compare needs --output_dir")
    if args.report and not args.compare:
        parser.error("--report goes with --compare")
    if args.num_images <= 0 or args.batch_size <= 0:
        parser.error("--num_images and --batch_size must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """The command; a user's mistake (a workdir without checkpoints) exits 2 with one line."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with cli.exit_on_user_error("prs_jax.fourier"):
        _run(args)


def _run(args: argparse.Namespace) -> None:

    def analyse(workdir: str) -> FourierResult:
        result = analyse_run(
            workdir, args.step, num_images=args.num_images, batch_size=args.batch_size
        )
        output_dir = args.output_dir if args.workdir else None
        output_dir = output_dir or default_output_dir(workdir, result.step)
        write_outputs(result, output_dir)
        logging.info("%s (step %d): wrote %s", workdir, result.step, output_dir)
        print(f"{result.label}, step {result.step}: {output_dir}")
        return result

    if args.workdir:
        analyse(args.workdir)
        return
    missing = [run for run in args.compare if run.endswith(".npz") and not os.path.isfile(run)]
    if missing:
        raise UserError(f"no file {', '.join(missing)}: give fourier.npz files this command wrote")
    stored = {run: FourierResult.load_npz(run) for run in args.compare if run.endswith(".npz")}
    workdirs = [npz_workdir(run) if run in stored else run for run in args.compare]
    accuracies = interpolation.read_report_accuracies(args.report) if args.report else None
    if accuracies is not None:  # before analysing any workdir: a typo costs no minutes
        unmatched = [
            interpolation.run_name(stored[run])
            for run, workdir in zip(args.compare, workdirs)
            if run in stored
            and workdir is None
            and interpolation.run_name(stored[run]) not in accuracies
        ]
        if unmatched:
            raise UserError(
                f"no row for run {', '.join(unmatched)} in {' '.join(args.report)}: give the "
                "report of the sweep that trained it, or compare its workdir"
            )
    results = [stored[run] if run in stored else analyse(run) for run in args.compare]
    epath.Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    path = os.path.join(args.output_dir, COMPARE_PNG)
    plot_high_frequency(results, path)
    comparison = interpolation.write_comparison(results, workdirs, args.output_dir, accuracies)
    paths = [path, *comparison]
    print(f"compared {len(results)} runs: {', '.join(paths)}")


if __name__ == "__main__":
    # TensorFlow only reads input here: keep it off the accelerators (as prs_jax.main does).
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
    main()
