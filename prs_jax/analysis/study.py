"""A study's whole report: the table and plot of prs_jax.analysis.report, the paired differences
of PRS against each other model over seeds, and every run's learning curve."""

from __future__ import annotations

from collections.abc import Sequence

from prs_jax.analysis import curves, paired, report


def write_study_report(workdirs: Sequence[str], prefix: str) -> list[str]:
    """PREFIX.{md,csv,png} (report.write_report; the .md gains the paired differences where runs
    share seeds) and PREFIX_curves.{csv,md,png} once a run has evaluated; the paths written."""
    paths = report.write_report(workdirs, prefix)
    found = report.find_workdirs(workdirs)
    rows = [report.read_run(w) for w in found]
    pairs = paired.default_pairs(rows)
    if pairs:
        with open(paths[0], "a", encoding="utf-8") as f:
            f.write(
                "\nPaired differences of final top-1 over the seeds both runs have "
                "(two-sided paired t-test):\n\n" + paired.paired_table(rows, pairs)
            )
    if any(r["final_accuracy"] is not None for r in rows):
        paths += curves.write_curves(found, prefix + "_curves")
    return paths
