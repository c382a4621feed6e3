"""The switch-point study of `python -m prs_jax.fourier --compare`: how a GPSA ViT moves from
ConViT (switch point 0) to the pure-conv ViT (never switches) as its layers stay convolutions
longer, with ResNet and DeiT beside it.

Per compared run, one row (COLUMNS) in OUT/high_frequency_compare.{csv,md}: its switch point
(`switch_point`), the mean high-frequency value of its Fourier profile
(spectra.mean_high_frequency), what each kind of block does to that value on average
(`change_per_attention` ...: spectra.high_frequency_change_by_kind) and its final and best
validation top-1 (report.read_run; for a fourier.npz kept after its workdir is gone, the row of
its run in a prs_jax.report CSV: `read_report_accuracies`), given only to a row analysed at its
run's last step: a checkpoint from the middle of a run (`--step`, e.g. at a switch) is not what
the run ended with. With two or more distinct switch points among the runs,
OUT/interpolation.png draws the high-frequency value and the final top-1 against it, each run at
its latest analysed step (`plot_interpolation`).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from etils import epath

from prs_jax.analysis import report
from prs_jax.analysis.fourier import save_figure
from prs_jax.analysis.spectra import (
    BLOCK_KINDS,
    high_frequency_change_by_kind,
    mean_high_frequency,
)
from prs_jax.errors import UserError

if TYPE_CHECKING:
    from prs_jax.analysis.fourier import FourierResult

COMPARE_TABLE = "high_frequency_compare"  # .csv and .md beside high_frequency_compare.png
INTERPOLATION_PNG = "interpolation.png"
COLUMNS = (
    "label",
    "workdir",
    "step",
    "schedule",
    "switch_point",
    "mean_high_frequency",
    *(f"change_per_{kind}" for kind in BLOCK_KINDS),
    "final_accuracy",
    "best_accuracy",
    "best_step",
)
TICKS, TICK_LABELS = (0.0, 0.25, 0.5, 0.75, 1.0), ("0", "1/4", "1/2", "3/4", "1")
NEVER = "conv"  # the schedule (report.schedule_kind) whose switch point 1.0 means "never"
ACCURACY_COLUMNS = ("final_accuracy", "best_accuracy", "best_step")
RUN_STEPS = "steps"  # a report's (and report.read_run's) last step of the run


def run_name(result: FourierResult) -> str:
    """The name of the run a result was analysed from: its workdir's name, which run_label puts
    before ': ' (the whole label for a result that has no workdir in it)."""
    return _label_run(result.label)


def _label_run(label: str) -> str:
    return label.split(": ", 1)[0]


def read_report_accuracies(paths: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Final and best top-1, best step and last step (RUN_STEPS) per run name, from
    prs_jax.report CSVs (PREFIX.csv):
    the accuracies of compared fourier.npz files whose workdirs are gone (results/ keeps the
    npz and the report, not the checkpoints). A later CSV's row for a run wins."""
    accuracies = {}
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"no report {path}: give PREFIX.csv files that prs_jax.report wrote")
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = {"run", *ACCURACY_COLUMNS, RUN_STEPS} - set(reader.fieldnames or ())
            if missing:
                raise UserError(
                    f"{path} has no column {', '.join(sorted(missing))}: give a CSV that "
                    "prs_jax.report wrote (PREFIX.csv, not PREFIX_curves.csv)"
                )
            for line in reader:
                accuracies[line["run"]] = {
                    "final_accuracy": float(line["final_accuracy"]),
                    "best_accuracy": float(line["best_accuracy"]),
                    "best_step": int(line["best_step"]),
                    RUN_STEPS: int(line[RUN_STEPS]),
                }
    return accuracies


def switch_point(config: Mapping[str, Any]) -> float | None:
    """When a run's GPSA layers switch from convolution to self-attention, as a fraction of the
    run, from its config (a ConfigDict or its config.json dict); None without GPSA layers (ResNet,
    DeiT).

    ConViT (no conv phase) is 0; a uniform switch at epoch E of num_epochs is E / num_epochs;
    a layer that never switches within the run (E >= num_epochs: the `conv` variant) counts as
    1.0, and report.schedule_kind names that schedule 'conv': 1.0 with that name means "never"
    (drawn at 1, labelled "never"). PRS and reversed PRS, whose layers switch at different
    points, get the mean over their GPSA layers (the midpoint of the first and last layer's,
    each capped at the run's end: report's conv epochs over num_epochs); the CSV says which
    schedule a row has, and the plot draws them apart from the uniform line. With a ramp, a
    layer's point is where its ramp starts, the end of its pure-convolution phase.
    """
    _, conv_epochs = report.schedule_kind(config)
    return None if conv_epochs is None else conv_epochs / float(config["num_epochs"])


def compare_row(
    result: FourierResult,
    workdir: str | None,
    report_accuracies: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """One row (COLUMNS) for a compared run; its workdir (None for a lone fourier.npz) gives the
    accuracies, or without its config.json and metrics.jsonl, its run's entry in
    `report_accuracies` (read_report_accuracies); else, or when the result is from a step before
    the run's last (the accuracies are the run's end, not that checkpoint's), they stay None. The
    switch point is read from the config stored with the analysis; an npz without one has none."""
    config = json.loads(result.config_json)
    row = dict.fromkeys(COLUMNS)
    row.update(
        label=result.label,
        workdir=workdir,
        step=result.step,
        mean_high_frequency=mean_high_frequency(result.spectra),
    )
    changes = high_frequency_change_by_kind(result.spectra, result.kinds)
    row.update({f"change_per_{kind}": changes.get(kind) for kind in BLOCK_KINDS})
    if config:
        row.update(schedule=report.schedule_kind(config)[0], switch_point=switch_point(config))
    run = None
    if workdir and os.path.exists(os.path.join(workdir, "config.json")):
        run = report.read_run(workdir)
    elif report_accuracies and run_name(result) in report_accuracies:
        run = report_accuracies[run_name(result)]
    if run is not None and result.step >= run[RUN_STEPS]:
        row.update({key: run[key] for key in ACCURACY_COLUMNS})
    return row


def latest_per_run(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Each run's row at its latest analysed step, in the order of first appearance: a run
    compared at a switch and at its end is one point of the interpolation, its end."""
    latest: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        name = _label_run(row["label"])
        if name not in latest or row["step"] > latest[name]["step"]:
            latest[name] = row
    return list(latest.values())


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as CSV, accuracies as fractions, None as an empty cell."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row[key] is None else row[key] for key in COLUMNS})
    return text.getvalue()


def _switch_cell(row: Mapping[str, Any]) -> str:
    if row["switch_point"] is None:
        return ""
    if row["schedule"] == NEVER:
        return "never"
    mean = "" if row["schedule"] in report.UNIFORM_FAMILY else " (mean over layers)"
    return f"{row['switch_point']:.3g}{mean}"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def _change(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:+.3f}"


MARKDOWN_HEADER = (
    "run",
    "step",
    "switch point",
    "mean high-frequency",
    *(f"change per {kind} block" for kind in BLOCK_KINDS),
    "final top-1 %",
    "best top-1 %",
)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a Markdown table, accuracies in %."""
    table = [MARKDOWN_HEADER, ("---",) * len(MARKDOWN_HEADER)]
    table += [
        (
            r["label"],
            str(r["step"]),
            _switch_cell(r),
            f"{r['mean_high_frequency']:.3f}",
            *(_change(r[f"change_per_{kind}"]) for kind in BLOCK_KINDS),
            _percent(r["final_accuracy"]),
            _percent(r["best_accuracy"]),
        )
        for r in rows
    ]
    return "".join("| " + " | ".join(cells) + " |\n" for cells in table)


def _scaled(row: Mapping[str, Any], key: str, scale: float) -> float | None:
    value = row[key]
    return None if value is None or not math.isfinite(value) else scale * value


def plot_interpolation(rows: Sequence[Mapping[str, Any]], path: str | None = None) -> Any:
    """(a) the mean high-frequency value and (b) the final top-1 against the switch point.

    The uniform family (ConViT at 0, uniform switches, the pure-conv ViT at 1 = "never") is one
    line; PRS and reversed PRS are stars at their mean switch point; the runs without GPSA
    layers (ResNet, DeiT) are labelled horizontal lines. Runs without a value are left out, and
    a run compared at several steps is drawn at its latest (`latest_per_run`).
    """
    from matplotlib import transforms  # pylint: disable=import-outside-toplevel
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

    rows = latest_per_run(rows)
    switching = [r for r in rows if r["switch_point"] is not None]
    uniform = [r for r in switching if r["schedule"] in report.UNIFORM_FAMILY]
    others = [r for r in switching if r["schedule"] not in report.UNIFORM_FAMILY]
    references = [r for r in rows if r["schedule"] == "none"]
    # One colour per run, the same in both panels; C0 is the uniform line's.
    colors = {id(r): f"C{i % 9 + 1}" for i, r in enumerate(others + references)}
    never = any(r["schedule"] == NEVER for r in switching)

    figure = Figure(figsize=(11.0, 4.8), layout="constrained")
    panels = figure.subplots(1, 2)
    high_frequency_label = "relative log amplitude at the highest frequency,\nmean over blocks"
    quantities = (
        ("mean_high_frequency", 1.0, "(a) high frequencies", high_frequency_label),
        ("final_accuracy", 100.0, "(b) accuracy", "final validation top-1 (%)"),
    )
    legend = {}
    for axes, (key, scale, title, ylabel) in zip(panels, quantities):
        value = functools.partial(_scaled, key=key, scale=scale)
        points = sorted((r["switch_point"], value(r)) for r in uniform if value(r) is not None)
        if points:
            axes.plot(*zip(*points), color="C0", marker="o", label="uniform switch")
        for row in others:
            if value(row) is not None:
                axes.plot(
                    row["switch_point"],
                    value(row),
                    marker="*",
                    markersize=14,
                    markeredgecolor="black",
                    linestyle="",
                    color=colors[id(row)],
                    label=f"{row['label']} (at its mean switch point)",
                )
        on_data = transforms.blended_transform_factory(axes.transAxes, axes.transData)
        for row in references:
            if value(row) is not None:
                color = colors[id(row)]
                axes.axhline(value(row), color=color, linestyle="--", label=row["label"])
                axes.text(
                    0.01,
                    value(row),
                    row["label"],
                    transform=on_data,
                    color=color,
                    fontsize=7,
                    va="bottom",
                )
        axes.set_xticks(TICKS, [*TICK_LABELS[:-1], "never" if never else TICK_LABELS[-1]])
        axes.set_xlim(-0.05, 1.05)
        axes.margins(y=0.1)
        axes.set(xlabel="switch point (fraction of the run; 0 = ConViT)", ylabel=ylabel)
        axes.set_title(title, fontsize=10)
        axes.grid(alpha=0.3)
        if not axes.get_legend_handles_labels()[0]:
            axes.text(0.5, 0.5, "no values", ha="center", transform=axes.transAxes, color="gray")
        legend.update(zip(*reversed(axes.get_legend_handles_labels())))
    if legend:
        figure.legend(
            legend.values(), legend.keys(), loc="outside lower center", ncols=3, fontsize=8
        )
    if path:
        save_figure(figure, path)
    return figure


def write_comparison(
    results: Sequence[FourierResult],
    workdirs: Sequence[str | None],
    output_dir: str,
    report_accuracies: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[str]:
    """OUT/high_frequency_compare.{csv,md} and, when the runs have two or more distinct switch
    points (a line to draw, not runs that differ only in rate or seed), OUT/interpolation.png;
    the paths written. `report_accuracies` as compare_row's."""
    rows = [
        compare_row(result, workdir, report_accuracies)
        for result, workdir in zip(results, workdirs)
    ]
    prefix = epath.Path(output_dir) / COMPARE_TABLE
    paths = [f"{prefix}.csv", f"{prefix}.md"]
    epath.Path(paths[0]).write_text(csv_text(rows))
    epath.Path(paths[1]).write_text(markdown_table(rows))
    if len({r["switch_point"] for r in rows} - {None}) >= 2:
        paths.append(str(epath.Path(output_dir) / INTERPOLATION_PNG))
        plot_interpolation(rows, paths[-1])
    return paths
