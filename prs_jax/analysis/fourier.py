"""The Fourier analysis of a run: its checkpoint, its evaluation images -> the relative
log-amplitude spectra of every block (prs_jax.analysis.spectra), their plots and an npz.
The command is prs_jax.fourier.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from prs_jax import data, models
from prs_jax.analysis.spectra import (
    diagonal_frequencies,
    feature_map_shapes,
    high_frequency,
    make_spectra_step,
    mean_spectra,
    normalised_depth,
    stack_padded,
)
from prs_jax.method import schedule
from prs_jax.training import checkpointing
from prs_jax.training.state import TrainState, create_model

NPZ_FILENAME = "fourier.npz"
SPECTRA_PNG = "spectra.png"
HIGH_FREQUENCY_PNG = "high_frequency.png"
COMPARE_PNG = "high_frequency_compare.png"


# ---------------------------------------------------------------------------------------------
# From a run's workdir: config, parameters, evaluation images -> spectra.


@dataclasses.dataclass
class FourierResult:
    """The spectra of one run at one step, and what the plots and the npz need."""

    spectra: np.ndarray  # f32[num_blocks, n], NaN-padded
    frequencies: np.ndarray  # f32[num_blocks, n] radians, NaN-padded like `spectra`
    kinds: tuple[str, ...]
    map_shapes: np.ndarray  # int[num_blocks, 2]: (H, W) of each feature map
    label: str
    step: int = -1
    num_images: int = 0
    conv_strength: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))
    config_json: str = "{}"

    @property
    def high_frequency(self) -> np.ndarray:
        return high_frequency(self.spectra)

    @property
    def depth(self) -> np.ndarray:
        return normalised_depth(len(self.kinds))

    def save_npz(self, path: Any) -> None:
        """To a local path or an open binary file (write_outputs opens gs:// ones)."""
        np.savez(
            path,
            spectra=self.spectra,
            frequencies=self.frequencies,
            high_frequency=self.high_frequency,
            depth=self.depth,
            kinds=np.array(self.kinds),
            map_shapes=self.map_shapes,
            label=np.array(self.label),
            step=np.array(self.step),
            num_images=np.array(self.num_images),
            conv_strength=self.conv_strength,
            config_json=np.array(self.config_json),
        )

    @classmethod
    def load_npz(cls, path: str) -> FourierResult:
        with epath.Path(path).open("rb") as file, np.load(file, allow_pickle=False) as f:
            return cls(
                spectra=f["spectra"],
                frequencies=f["frequencies"],
                kinds=tuple(str(k) for k in f["kinds"]),
                map_shapes=f["map_shapes"],
                label=str(f["label"]),
                step=int(f["step"]),
                num_images=int(f["num_images"]),
                conv_strength=f["conv_strength"],
                config_json=str(f["config_json"]),
            )


def run_label(config: ml_collections.ConfigDict, workdir: str | None = None) -> str:
    """A legend entry from a run's config: model, and for GPSA models the schedule."""
    name = config.model.name
    num_gpsa_layers = config.model.get("num_gpsa_layers", None)
    if num_gpsa_layers is None and name in models.VIT_VARIANTS:
        num_gpsa_layers = models.VIT_VARIANTS[name]["num_gpsa_layers"]
    text = name
    if num_gpsa_layers == 0 and not name.startswith("deit"):
        text += " DeiT (no GPSA layer)"
    if num_gpsa_layers:
        first = config.schedule.first_layer_switch_epoch
        last = config.schedule.last_layer_switch_epoch
        if first == last == 0:
            text += " ConViT (no conv phase)"
        elif min(first, last) >= config.num_epochs:
            text += " conv (never switches)"
        else:
            kind = "PRS" if first > last else "reversed PRS" if first < last else "uniform"
            text += f" {kind}, switch epochs {first:.3g}->{last:.3g} of {config.num_epochs:.3g}"
    if workdir:
        text = f"{os.path.basename(os.path.normpath(workdir))}: {text}"
    return text


def analyse_run(
    workdir: str, step: int | None = None, *, num_images: int = 1024, batch_size: int = 64
) -> FourierResult:
    """Spectra of a run's checkpoint (the latest by default) over the first `num_images` of its
    evaluation split, `batch_size` images at a time."""
    step = checkpointing.checkpoint_step(workdir, step)
    config = checkpointing.restore_config(workdir, step)
    info = data.dataset_info(config.data)
    model = create_model(config, info.num_classes)
    variables, step = checkpointing.restore_variables(workdir, model, config.data.image_size, step)

    training = schedule.training_steps(
        info.num_train_examples,
        config.batch_size,
        config.num_epochs,
        config.optimizer.warmup_epochs,
    )
    conv_strength_fn = schedule.make_conv_strength_fn(
        model.num_gpsa_layers, training.steps_per_epoch, config.schedule
    )
    state = TrainState(
        step=jnp.asarray(step, jnp.int32),
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        opt_state=None,
        rng=None,
    )
    spectra_step = jax.jit(make_spectra_step(model, conv_strength_fn))
    batches = data.create_eval_iterator(config.data, global_batch_size=batch_size)
    totals = accumulate_spectra(spectra_step, state, batches, num_images)

    map_shapes = feature_map_shapes(model, variables, config.data.image_size)
    return FourierResult(
        spectra=mean_spectra(totals),
        frequencies=stack_padded([diagonal_frequencies(h, w) for h, w in map_shapes]),
        kinds=tuple(model.feature_map_kinds()),
        map_shapes=map_shapes,
        label=run_label(config, workdir),
        step=step,
        num_images=int(totals["count"]),
        conv_strength=np.asarray(conv_strength_fn(max(step - 1, 0))),
        config_json=json.dumps(config.to_dict(), sort_keys=True),
    )


def accumulate_spectra(
    spectra_step: Callable[[Any, Mapping[str, jax.Array]], dict[str, Any]],
    state: Any,
    batches: Iterable[Mapping[str, np.ndarray]],
    num_images: int,
) -> dict[str, Any]:
    """Sum a spectra step over batches until `num_images` real examples (or the split) are read."""
    totals, seen = None, 0
    for batch in batches:
        if seen >= num_images:
            break
        # Mask out the examples past num_images; the padding of the last batch is masked already.
        position = seen + np.cumsum(batch["mask"])
        batch = {**batch, "mask": batch["mask"] & (position <= num_images)}
        seen += int(batch["mask"].sum())
        out = jax.device_get(spectra_step(state, batch))
        totals = out if totals is None else jax.tree.map(np.add, totals, out)
    if totals is None:
        raise ValueError("the evaluation split yielded no batch")
    return totals


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib's object API: no pyplot state, no backend switch in a notebook).


def plot_spectra(result: FourierResult, path: str | None = None) -> Any:
    """Each block's relative log amplitude over frequency, coloured by normalised depth."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

    figure = Figure(figsize=(5.5, 4.0), layout="constrained")
    axes = figure.add_subplot()
    colormap = matplotlib.colormaps["plasma"]
    norm = matplotlib.colors.Normalize(0.0, 1.0)
    for depth, kind, freqs, values in zip(
        result.depth, result.kinds, result.frequencies, result.spectra
    ):
        finite = np.isfinite(values)
        axes.plot(
            freqs[finite] / np.pi,
            values[finite],
            color=colormap(norm(depth)),
            linestyle="--" if kind == "attention" else "-",
            marker=".",
            linewidth=1.2,
        )
    axes.set_xlim(0.0, 1.0)
    axes.set_xlabel("frequency (x pi)")
    axes.set_ylabel("relative log amplitude")
    axes.set_title(_title(result), fontsize=9)
    figure.colorbar(matplotlib.cm.ScalarMappable(norm, colormap), ax=axes, label="normalised depth")
    if any(kind == "attention" for kind in result.kinds):
        axes.plot([], [], "k--", label="attention")
        axes.plot([], [], "k-", label="other blocks")
        axes.legend(fontsize=8, loc="lower left")
    if path:
        save_figure(figure, path)
    return figure


def plot_high_frequency(results: Sequence[FourierResult], path: str | None = None) -> Any:
    """Highest-frequency value against normalised depth, one line per run; attention shaded.

    Attention blocks are shaded when every run that has them has the same sequence of block
    kinds (one run, or a sweep of one architecture); they are always drawn as open markers.
    """
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

    figure = Figure(figsize=(6.0, 4.0), layout="constrained")
    axes = figure.add_subplot()
    with_attention = {r.kinds for r in results if "attention" in r.kinds}
    if len(with_attention) == 1:
        kinds = next(iter(with_attention))
        depth = normalised_depth(len(kinds))
        half = 0.5 / max(len(kinds) - 1, 1)
        for d, kind in zip(depth, kinds):
            if kind == "attention":
                axes.axvspan(d - half, d + half, color="0.85", linewidth=0, zorder=0)
    labels = [r.label for r in results]
    for index, result in enumerate(results):
        color = f"C{index % 10}"
        values, depth = result.high_frequency, result.depth
        label = result.label
        if labels.count(label) > 1:  # one run at several steps
            label = f"{label}, step {result.step}"
        axes.plot(depth, values, color=color, linewidth=1.2, label=label)
        is_attention = np.array([k == "attention" for k in result.kinds])
        axes.scatter(depth[~is_attention], values[~is_attention], color=color, s=18, zorder=3)
        axes.scatter(
            depth[is_attention],
            values[is_attention],
            facecolors="white",
            edgecolors=color,
            s=18,
            zorder=3,
        )
    axes.set_xlim(-0.02, 1.02)
    axes.set_xlabel("normalised depth")
    axes.set_ylabel("relative log amplitude at the highest frequency")
    note = "\nopen markers (shaded): attention blocks" if with_attention else ""
    if len(results) == 1:
        axes.set_title(_title(results[0]) + note, fontsize=9)
    else:
        axes.set_title(note.strip(), fontsize=9)
        axes.legend(fontsize=7)
    if path:
        save_figure(figure, path)
    return figure


def _title(result: FourierResult) -> str:
    step = f"step {result.step}, " if result.step >= 0 else ""
    return f"{result.label}\n{step}{result.num_images} images"


# ---------------------------------------------------------------------------------------------
# Command line.


def save_figure(figure: Any, path: str) -> None:
    """PNG (or the suffix's format) at a local or gs:// path."""
    with epath.Path(path).open("wb") as file:
        figure.savefig(file, format=epath.Path(path).suffix.lstrip(".") or "png", dpi=120)


def write_outputs(result: FourierResult, output_dir: str) -> None:
    """fourier.npz, spectra.png and high_frequency.png in `output_dir` (local or gs://)."""
    epath.Path(output_dir).mkdir(parents=True, exist_ok=True)
    with (epath.Path(output_dir) / NPZ_FILENAME).open("wb") as file:
        result.save_npz(file)
    plot_spectra(result, os.path.join(output_dir, SPECTRA_PNG))
    plot_high_frequency([result], os.path.join(output_dir, HIGH_FREQUENCY_PNG))
