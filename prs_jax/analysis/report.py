"""Collect final and best eval accuracies from run workdirs into a table and a plot.

writes PREFIX.md (a Markdown table, accuracies in %), PREFIX.csv (the same rows, accuracies as
fractions at full precision) and PREFIX.png: top-1 against the train fraction per model (the
data-scale study), and top-1 against conv epochs (how long the GPSA layers stay convolutions,
averaged over layers: the uniform-switch study; PRS and reversed PRS as single points).

A run is read from its config.json (model, schedule, data.train_fraction) and metrics.jsonl
(`eval/accuracy` records); a run without eval records yet is listed with empty accuracies.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
from collections.abc import Sequence
from typing import Any

from prs_jax.errors import UserError
from prs_jax.training import metrics_file


class NoRunsError(UserError, FileNotFoundError):
    """A path given as runs holds no run workdir."""


ACCURACY = "eval/accuracy"
COLUMNS = (
    "run",
    "dataset",
    "model",
    "schedule",
    "train_fraction",
    "conv_epochs",
    "num_epochs",
    "steps",
    "final_accuracy",
    "best_accuracy",
    "best_step",
    "last_quarter_gain",
    "seed",
    "wall_time_s",
)
# Schedules with one switch epoch for every layer: one line on the conv-epochs plot.
UNIFORM_FAMILY = ("convit", "uniform", "conv")


def _num_gpsa_layers(model: dict[str, Any]) -> int:
    if model.get("num_gpsa_layers") is not None:  # None: unset, the named model's default
        return int(model["num_gpsa_layers"])
    from prs_jax.models.vit import VIT_VARIANTS  # pylint: disable=import-outside-toplevel

    return int(VIT_VARIANTS.get(model.get("name"), {}).get("num_gpsa_layers", 0))


def schedule_kind(config: dict[str, Any]) -> tuple[str, float | None]:
    """(schedule name, mean conv epochs over GPSA layers) of a run; ('none', None) without GPSA.

    Layer switch epochs are linear in depth from first to last, so their mean is the midpoint.
    """
    if _num_gpsa_layers(config["model"]) == 0:
        return "none", None
    first = float(config["schedule"]["first_layer_switch_epoch"])
    last = float(config["schedule"]["last_layer_switch_epoch"])
    epochs = float(config["num_epochs"])
    if first == last:
        kind = "convit" if first == 0 else "conv" if first >= epochs else "uniform"
    else:
        kind = "prs" if first > last else "reversed"
    return kind, (min(first, epochs) + min(last, epochs)) / 2


def read_run(workdir: str) -> dict[str, Any]:
    """One table row for a run's workdir (see COLUMNS)."""
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    kind, conv_epochs = schedule_kind(config)
    records = (
        metrics_file.read_metrics(workdir)
        if os.path.exists(os.path.join(workdir, metrics_file.METRICS_FILENAME))
        else []
    )
    evals = [(r["step"], r[ACCURACY]) for r in records if ACCURACY in r]
    row = {
        "run": os.path.basename(os.path.normpath(workdir)),
        "dataset": config["data"]["name"],
        "model": config["model"]["name"],
        "schedule": kind,
        "train_fraction": float(config["data"].get("train_fraction", 1.0)),
        "conv_epochs": conv_epochs,
        "num_epochs": float(config["num_epochs"]),
        "steps": max((r["step"] for r in records), default=0),
        "final_accuracy": evals[-1][1] if evals else None,
        "best_accuracy": None,
        "best_step": None,
        "last_quarter_gain": last_quarter_gain(evals),
        "seed": config.get("seed"),
        "wall_time_s": wall_time_s(records),
        # Runs with equal variants differ only in their seed: the summary averages those alone.
        "variant": json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True),
    }
    if evals:
        best_step, best = max(evals, key=lambda e: (e[1], -e[0]))  # earliest of equal bests
        row.update(best_accuracy=best, best_step=best_step)
    return row


def last_quarter_gain(evals: Sequence[tuple[int, float]]) -> float | None:
    """Top-1 gained over the last quarter of the evaluated steps: the last evaluation's accuracy
    minus that of the latest evaluation at or before 3/4 of its step (the run-length rule of
    configs/sweeps/cifar10_study.py asks this to be about 1 point at most). None without an
    evaluation in the first three quarters."""
    if not evals:
        return None
    last_step, last_accuracy = evals[-1]
    earlier = [accuracy for step, accuracy in evals if step <= 0.75 * last_step]
    return last_accuracy - earlier[-1] if earlier else None


def wall_time_s(records: Sequence[dict[str, Any]]) -> float | None:
    """Seconds that the processes which trained a run spent, together: clu's ReportProgress logs
    each process's uptime with its steps/s, and a resumed run's uptime starts again from 0, so
    each drop closes a process's share. The time from a killed process's last report to its end
    is not counted (it is not recorded)."""
    total, last = 0.0, None
    for record in records:
        if "uptime" not in record:
            continue
        if last is not None and record["uptime"] < last:
            total += last
        last = record["uptime"]
    return None if last is None else total + last


def find_workdirs(paths: Sequence[str]) -> list[str]:
    """Run workdirs (folders with config.json) among `paths`; a folder of runs gives its runs."""
    workdirs = []
    for path in paths:
        if os.path.exists(os.path.join(path, "config.json")):
            workdirs.append(path)
            continue
        children = (
            sorted(
                os.path.join(path, name)
                for name in os.listdir(path)
                if os.path.exists(os.path.join(path, name, "config.json"))
            )
            if os.path.isdir(path)
            else []
        )
        if not children:
            raise NoRunsError(
                f"{path} is not a run workdir (no config.json) nor a folder of runs: give the"
                " --workdir of training runs, or a folder that holds them"
            )
        workdirs.extend(children)
    return workdirs


def series(row: dict[str, Any]) -> str:
    """The legend entry of a run: its model, with its schedule for a model with GPSA layers."""
    if row["schedule"] == "none":
        return row["model"]
    if row["schedule"] == "uniform":
        return f"{row['model']}/uniform@{row['conv_epochs']:g}"
    return f"{row['model']}/{row['schedule']}"


def _seedless_name(run: str) -> str:
    head, _, tail = run.rpartition("_seed")
    return head if head and tail.isdigit() else run


def labels(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """{run: its line in the summary and the plot}: its series, unless runs of that series at
    its train fraction differ in more than their seed (a budget, a switch point, an optimizer
    option); then each such variant is told apart by the name of its first run, seed removed.
    So only runs that differ in their seed alone are ever averaged."""
    cells: dict[tuple[str, float], dict[str, list[str]]] = {}
    for r in rows:
        variants = cells.setdefault((series(r), r["train_fraction"]), {})
        variants.setdefault(r["variant"], []).append(r["run"])
    names = {}
    for (name, _), variants in cells.items():
        for runs in variants.values():
            label = name if len(variants) == 1 else f"{name} [{_seedless_name(min(runs))}]"
            names.update(dict.fromkeys(runs, label))
    return names


def _mean_by_x(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points sorted by x, repeated x (runs with other seeds) averaged."""
    xs = sorted({x for x, _ in points})
    return [
        (x, float(sum(y for px, y in points if px == x) / sum(px == x for px, _ in points)))
        for x in xs
    ]


def _sort_key(row: dict[str, Any]):
    conv = row["conv_epochs"] if row["conv_epochs"] is not None else -1.0
    return (row["dataset"], series(row), row["train_fraction"], conv, row["run"])


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def _minutes_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        "run",
        "dataset",
        "model",
        "schedule",
        "data %",
        "conv epochs",
        "epochs",
        "steps",
        "final top-1 %",
        "best top-1 %",
        "best step",
        "last quarter adds (points)",
        "wall time",
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = (
            r["run"],
            r["dataset"],
            r["model"],
            r["schedule"],
            f"{100 * r['train_fraction']:g}",
            "" if r["conv_epochs"] is None else f"{r['conv_epochs']:g}",
            f"{r['num_epochs']:g}",
            str(r["steps"]),
            _percent(r["final_accuracy"]),
            _percent(r["best_accuracy"]),
            "" if r["best_step"] is None else str(r["best_step"]),
            "" if r["last_quarter_gain"] is None else f"{100 * r['last_quarter_gain']:+.2f}",
            _minutes_seconds(r["wall_time_s"]),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """Final top-1 % per model (rows) and data % (columns) over seeds: mean, and with 2 or more
    seeds +- the sample standard deviation and the number of seeds."""
    done = [r for r in rows if r["final_accuracy"] is not None]
    label = labels(done)
    fractions = sorted({r["train_fraction"] for r in done})
    names = sorted(set(label.values()))
    lines = [
        "| model | " + " | ".join(f"{100 * f:g}% data" for f in fractions) + " |",
        "|" + "---|" * (len(fractions) + 1),
    ]
    for name in names:
        cells = []
        for fraction in fractions:
            values = [
                100 * r["final_accuracy"]
                for r in done
                if label[r["run"]] == name and r["train_fraction"] == fraction
            ]
            if not values:
                cells.append("")
            elif len(values) == 1:
                cells.append(f"{values[0]:.2f}")
            else:
                cells.append(
                    f"{statistics.mean(values):.2f} +- {statistics.stdev(values):.2f}"
                    f" ({len(values)} seeds)"
                )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[dict[str, Any]], path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r[k] is None else r[k]) for k in COLUMNS})


def plot(rows: Sequence[dict[str, Any]], path: str) -> None:
    """Final top-1 against data fraction (per model) and against conv epochs (switch sweeps).

    The final evaluation, not the best of a run's evaluations: the best is picked on the same
    validation split it reports, so it flatters runs with noisier curves (figures made before
    2026-12-05 plotted the best and say so on their axes). Runs that differ only in their seed
    are averaged (`labels`). The conv-epochs panel shows each (model, data fraction, budget)
    with uniform switches at two or more epochs, and its PRS runs as stars.
    """
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    done = [r for r in rows if r["final_accuracy"] is not None]
    label = labels(done)
    fig, (by_ratio, by_conv) = plt.subplots(1, 2, figsize=(12, 4.5))

    for name in sorted(set(label.values())):
        points = [
            (100 * r["train_fraction"], 100 * r["final_accuracy"])
            for r in done
            if label[r["run"]] == name
        ]
        by_ratio.plot(*zip(*_mean_by_x(points)), marker="o", label=name)
    fractions = sorted({100 * r["train_fraction"] for r in done})
    if len(fractions) > 1:
        by_ratio.set_xscale("log")
        by_ratio.minorticks_off()
    if fractions:
        by_ratio.set_xticks(fractions, [f"{f:g}" for f in fractions])
    by_ratio.set(
        xlabel="training data (%)", ylabel="final top-1 (%)", title="Accuracy vs data scale"
    )

    groups = {}  # runs of one model, data fraction and budget: one uniform-switch sweep
    for r in done:
        if r["conv_epochs"] is not None:
            groups.setdefault((r["model"], r["train_fraction"], r["num_epochs"]), []).append(r)
    sweeps = {
        key: runs
        for key, runs in groups.items()
        if len({r["conv_epochs"] for r in runs if r["schedule"] in UNIFORM_FAMILY}) > 1
    }
    for (model, fraction, epochs), runs in sorted(sweeps.items()):
        tag = f"{model}, {100 * fraction:g}% data, {epochs:.3g} epochs"
        uniform = [
            (r["conv_epochs"], 100 * r["final_accuracy"])
            for r in runs
            if r["schedule"] in UNIFORM_FAMILY
        ]
        (line,) = by_conv.plot(
            *zip(*_mean_by_x(uniform)), marker="o", label=f"uniform switch ({tag})"
        )
        others = sorted({label[r["run"]] for r in runs if r["schedule"] not in UNIFORM_FAMILY})
        for kind in others:
            points = [
                (r["conv_epochs"], 100 * r["final_accuracy"])
                for r in runs
                if label[r["run"]] == kind
            ]
            by_conv.plot(
                *zip(*_mean_by_x(points)),
                marker="*",
                markersize=14,
                linestyle="",
                color=line.get_color(),
                markeredgecolor="black",
                label=f"{kind} ({100 * fraction:g}% data)",
            )
    if not sweeps:
        by_conv.text(
            0.5,
            0.5,
            "no uniform-switch sweep among these runs",
            ha="center",
            va="center",
            transform=by_conv.transAxes,
            color="gray",
        )
    by_conv.set(
        xlabel="conv epochs (mean over GPSA layers)",
        ylabel="final top-1 (%)",
        title="Accuracy vs conv epochs",
    )
    for axes in (by_ratio, by_conv):
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(workdirs: Sequence[str], prefix: str) -> list[str]:
    """Write PREFIX.md, PREFIX.csv and PREFIX.png for the runs in `workdirs`; the paths written."""
    rows = sorted((read_run(w) for w in find_workdirs(workdirs)), key=_sort_key)
    if os.path.dirname(prefix):
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
    paths = [prefix + ".md", prefix + ".csv", prefix + ".png"]
    with open(paths[0], "w", encoding="utf-8") as f:
        f.write(markdown_table(rows))
        f.write("\nFinal top-1 (%) by model and data scale:\n\n" + summary_table(rows))
    write_csv(rows, paths[1])
    plot(rows, paths[2])
    return paths
