r"""Collect final and best eval accuracies from run workdirs into a table and a plot, with paired
differences over seeds and learning curves (prs_jax.analysis.study).

  python -m prs_jax.report --workdirs ~/runs/ratios/* --out ~/runs/ratios/report
  python -m prs_jax.report --workdirs ~/runs/ratios --out /tmp/report   # a folder of runs
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from prs_jax import cli
from prs_jax.analysis.study import write_study_report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m prs_jax.report", description=__doc__.split("\n\n", maxsplit=1)[0]
    )
    parser.add_argument(
        "--workdirs", nargs="+", required=True, help="run workdirs, or folders of them"
    )
    parser.add_argument(
        "--out",
        required=True,
        help="output prefix: writes PREFIX.md, .csv, .png and PREFIX_curves.csv, .md, .png",
    )
    args = parser.parse_args(argv)
    with cli.exit_on_user_error("prs_jax.report"):  # e.g. a path that holds no run
        for path in write_study_report(args.workdirs, args.out):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
