"""Learning curves of runs: validation top-1 at every evaluation, and how much a run's last
quarter added (the study's rule for a run length at which the models have converged).

A run is read from its config.json (model, schedule, peak learning rate) and metrics.jsonl
(`eval/accuracy`, `eval/loss` records); its length is its finished.json step when it has one
(prs_jax.training.completion), so an unfinished run is drawn but given no last-quarter gain.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from typing import Any

from prs_jax.analysis import report
from prs_jax.training import completion, metrics_file

CURVE_COLUMNS = ("run", "family", "peak_learning_rate", "step", "accuracy", "loss")


def family(config: dict[str, Any]) -> str:
    """The model family whose learning rate one study picks: a GPSA ViT, a plain ViT, a ResNet;
    named with the sizes the config sets over the named model's (configs/cifar10.py's ConViT is
    `convit_tiny` at width 128 and depth 6)."""
    model = config["model"]
    sizes = [
        f"{label} {model[key]}"
        for key, label in (("hidden_size", "width"), ("width", "width"), ("depth", "depth"))
        if model.get(key) is not None
    ]
    name = ", ".join([model["name"], *sizes])
    return f"{name} (GPSA)" if report.schedule_kind(config)[0] != "none" else name


def peak_learning_rate(config: dict[str, Any]) -> float:
    """The run's peak rate as prs_jax.method.optimizer resolves it (the DeiT rule or absolute)."""
    optimizer = config["optimizer"]
    if float(optimizer.get("learning_rate_per_512", 0.0)) > 0:
        return float(optimizer["learning_rate_per_512"]) * int(config["batch_size"]) / 512
    return float(optimizer["learning_rate"])


def read_curve(workdir: str) -> dict[str, Any]:
    """{run, family, peak_learning_rate, total_steps (None if unfinished), points: [(step,
    accuracy, loss)]} of one run."""
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    path = os.path.join(workdir, metrics_file.METRICS_FILENAME)
    records = metrics_file.read_metrics(workdir) if os.path.exists(path) else []
    by_step = {}  # a resumed run may evaluate a step twice: the last record wins
    for r in records:
        if report.ACCURACY in r:
            by_step[int(r["step"])] = (float(r[report.ACCURACY]), r.get("eval/loss"))
    finished = os.path.join(workdir, completion.FINISHED_FILE)
    total_steps = None
    if os.path.exists(finished):
        with open(finished, encoding="utf-8") as f:
            total_steps = int(json.load(f)["step"])
    return {
        "run": os.path.basename(os.path.normpath(workdir)),
        "family": family(config),
        "peak_learning_rate": peak_learning_rate(config),
        "total_steps": total_steps,
        "points": [(s, a, loss) for s, (a, loss) in sorted(by_step.items())],
    }


def accuracy_at(curve: dict[str, Any], step: float) -> float:
    """Top-1 of the last evaluation at or before `step` (the model a run of that many steps
    would have had, had it stopped there)."""
    before = [a for s, a, _ in curve["points"] if s <= step]
    if not before:
        raise ValueError(f"run {curve['run']} has no evaluation at or before step {step:g}")
    return before[-1]


def last_quarter_gain(curve: dict[str, Any]) -> float | None:
    """Final top-1 minus top-1 at 3/4 of the run (fractions); None for an unfinished run."""
    if curve["total_steps"] is None or not curve["points"]:
        return None
    final = curve["points"][-1][1]
    return final - accuracy_at(curve, 0.75 * curve["total_steps"])


def gain_table(curves: Sequence[dict[str, Any]]) -> str:
    """Markdown: per run its family, peak rate, final and best top-1 and the last quarter's gain."""
    lines = [
        "| run | family | peak rate | steps | final top-1 % | best top-1 % | last quarter adds |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in curves:
        points = c["points"]
        final = f"{100 * points[-1][1]:.2f}" if points else ""
        best = f"{100 * max(a for _, a, _ in points):.2f}" if points else ""
        gain = last_quarter_gain(c)
        steps = str(c["total_steps"]) if c["total_steps"] is not None else "unfinished"
        lines.append(
            f"| {c['run']} | {c['family']} | {c['peak_learning_rate']:.3g} | {steps} | {final} "
            f"| {best} | {'' if gain is None else f'{100 * gain:+.2f} points'} |"
        )
    return "\n".join(lines) + "\n"


def write_curves_csv(curves: Sequence[dict[str, Any]], path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CURVE_COLUMNS)
        for c in curves:
            for step, accuracy, loss in c["points"]:
                writer.writerow(
                    (c["run"], c["family"], c["peak_learning_rate"], step, accuracy, loss)
                )


def plot_curves(curves: Sequence[dict[str, Any]], path: str) -> None:
    """One panel per model family: validation top-1 against step, one line per run."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    families = sorted({c["family"] for c in curves if c["points"]})
    if not families:
        raise ValueError("no run among these has an evaluation yet: nothing to plot")
    fig, axes = plt.subplots(
        1, len(families), figsize=(5 * len(families), 4), squeeze=False, sharey=True
    )
    for ax, name in zip(axes[0], families):
        for c in sorted(
            (c for c in curves if c["family"] == name), key=lambda c: c["peak_learning_rate"]
        ):
            if not c["points"]:
                continue
            steps, accuracy, _ = zip(*c["points"])
            tag = "" if c["total_steps"] is not None else ", unfinished"
            ax.plot(
                steps,
                [100 * a for a in accuracy],
                marker=".",
                label=f"peak rate {c['peak_learning_rate']:.3g}{tag}",
            )
        ax.set(title=name, xlabel="step", ylabel="validation top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_curves(workdirs: Sequence[str], prefix: str) -> list[str]:
    """PREFIX.csv (every evaluation), PREFIX.md (the gain table), PREFIX.png; the paths."""
    curves = [read_curve(w) for w in report.find_workdirs(workdirs)]
    curves.sort(key=lambda c: (c["family"], c["peak_learning_rate"], c["run"]))
    if os.path.dirname(prefix):
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
    paths = [prefix + ".csv", prefix + ".md", prefix + ".png"]
    write_curves_csv(curves, paths[0])
    with open(paths[1], "w", encoding="utf-8") as f:
        f.write(gain_table(curves))
    plot_curves(curves, paths[2])
    return paths
