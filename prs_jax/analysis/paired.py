"""Paired comparisons of two models over seeds: runs that share a train fraction and a seed share
the initialisation's random key and the batch order, so their difference is measured against
less noise than two independent means (the study's "PRS - ConViT per seed").

The test is a two-sided paired t-test on the per-seed differences of final top-1
(scipy.stats.ttest_rel); with 3 seeds it has 2 degrees of freedom, so only a difference that is
large against its spread across seeds reaches p < 0.05.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from prs_jax.analysis import report


def paired_differences(
    rows: Sequence[dict[str, Any]], first: str, second: str
) -> list[dict[str, Any]]:
    """Per train fraction where both labels have runs with common seeds: {fraction, seeds,
    differences (first - second, in points), mean, stdev, t, p}. Labels are report.labels'."""
    done = [r for r in rows if r["final_accuracy"] is not None]
    label = report.labels(done)
    results = []
    for fraction in sorted({r["train_fraction"] for r in done}):
        by_seed = {}
        for name in (first, second):
            by_seed[name] = {
                r["seed"]: 100 * r["final_accuracy"]
                for r in done
                if label[r["run"]] == name and r["train_fraction"] == fraction
            }
        seeds = sorted(set(by_seed[first]) & set(by_seed[second]))
        if not seeds:
            continue
        differences = [by_seed[first][s] - by_seed[second][s] for s in seeds]
        result = {
            "fraction": fraction,
            "seeds": seeds,
            "differences": differences,
            "mean": statistics.mean(differences),
            "stdev": statistics.stdev(differences) if len(seeds) > 1 else None,
            "t": None,
            "p": None,
        }
        if len(seeds) > 1:
            from scipy import stats  # pylint: disable=import-outside-toplevel

            test = stats.ttest_rel(
                [by_seed[first][s] for s in seeds], [by_seed[second][s] for s in seeds]
            )
            # Identical differences at every seed: no spread, the t statistic is undefined.
            if math.isfinite(test.statistic):
                result.update(t=float(test.statistic), p=float(test.pvalue))
        results.append(result)
    return results


def paired_table(rows: Sequence[dict[str, Any]], pairs: Sequence[tuple[str, str]]) -> str:
    """Markdown: one line per (pair, fraction) with the per-seed differences and the test."""
    lines = [
        "| comparison | data % | seeds | per-seed difference (points) | mean | paired t | p |",
        "|---|---|---|---|---|---|---|",
    ]
    for first, second in pairs:
        for r in paired_differences(rows, first, second):
            per_seed = ", ".join(f"{d:+.2f}" for d in r["differences"])
            t = "" if r["t"] is None else f"{r['t']:.2f}"
            p = "" if r["p"] is None else f"{r['p']:.3f}"
            lines.append(
                f"| {first} - {second} | {100 * r['fraction']:g} | "
                f"{','.join(map(str, r['seeds']))} | {per_seed} | {r['mean']:+.2f} | {t} | {p} |"
            )
    return "\n".join(lines) + "\n"


def default_pairs(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """PRS against every other label of the runs (ConViT, the uniform switch, DeiT, ResNet)."""
    label = report.labels([r for r in rows if r["final_accuracy"] is not None])
    names = sorted(set(label.values()))
    prs = [n for n in names if n.endswith("/prs")]
    return [(p, other) for p in prs for other in names if other != p]
