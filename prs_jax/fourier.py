r"""Relative log-amplitude spectra of feature maps (Park & Kim, "How do vision transformers work?",
ICLR 2022, Sec. 2.2 and Fig. 2), for any model of ours and any checkpoint, with their plots.

Per feature map [B, H, W, C]: 2-D FFT over space per example and channel, log(|F| + 1e-6), zero
frequency shifted to the centre, mean over examples and channels, the diagonal from the centre
towards the corner, minus the zero-frequency value. Park & Kim find that attention blocks lower
the high-frequency value (low-pass filters) and convolutions and MLPs raise it (Fig. 2b, 8).
Feature maps are mostly low-pass, so values are usually <= 0; white noise sits at +log(2)/2,
since the zero-frequency coefficient of a real map is real (tests/test_fourier.py derives it).

  python -m prs_jax.fourier --workdir DIR [--step N] [--num_images N]
      writes DIR/fourier/step_<N>/{fourier.npz, spectra.png, high_frequency.png}
  python -m prs_jax.fourier --compare RUN [RUN ...] --output_dir OUT
      RUN is a workdir (analysed as above) or a fourier.npz; writes OUT/high_frequency_compare.png

The diagonal holds ceil(min(H, W) / 2) points, at the frequencies 2 pi k / min(H, W) with
k = 0, 1, ... below pi: H/2 points for an even square map (Park & Kim's `diag()[h // 2:]`;
their plots label the last point pi, it sits at pi (1 - 2/H)), (H + 1)/2 for an odd one. The
Nyquist corner of an even map is left out: like the zero frequency, its coefficient is real.
On a non-square map the diagonal runs at equal frequency on both axes: the shorter axis sets the
points exactly and the longer axis takes its nearest coefficient (exact when the longer side is
a multiple of the shorter). The spectra of a whole model are a [num_blocks, n] array with n the
longest block's count; the shorter rows of a ResNet's later stages are padded with NaN.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from prs_jax import checkpointing, data, models, schedule

LOG_EPSILON = 1e-6  # Park & Kim's log(|F| + 1e-6)
NPZ_FILENAME = "fourier.npz"
SPECTRA_PNG = "spectra.png"
HIGH_FREQUENCY_PNG = "high_frequency.png"
COMPARE_PNG = "high_frequency_compare.png"


# ---------------------------------------------------------------------------------------------
# The spectrum of one feature map (pure jnp, jit-able, float32).


def diagonal_frequencies(height: int, width: int) -> np.ndarray:
    """f32[ceil(min(H, W) / 2)]: the frequency (radians) of each point of the diagonal."""
    side = min(height, width)
    return (2 * np.pi * np.arange(math.ceil(side / 2)) / side).astype(np.float32)


def diagonal_indices(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the diagonal in the centred ([H // 2, W // 2] = zero) spectrum."""
    side = min(height, width)
    k = np.arange(math.ceil(side / 2))
    rows = height // 2 + np.rint(k * height / side).astype(int)
    cols = width // 2 + np.rint(k * width / side).astype(int)
    assert rows[-1] < height and cols[-1] < width, (height, width)
    return rows, cols


def relative_log_amplitude_per_example(feature_map: jax.Array) -> jax.Array:
    """[B, H, W, C] (any float dtype) -> f32[B, n]: each example's spectrum, mean over channels."""
    if feature_map.ndim != 4:
        raise ValueError(f"feature_map must be [B, H, W, C], got shape {feature_map.shape}")
    _, height, width, _ = feature_map.shape
    spectrum = jnp.fft.fft2(jnp.asarray(feature_map, jnp.float32), axes=(1, 2))
    log_amplitude = jnp.mean(jnp.log(jnp.abs(spectrum) + LOG_EPSILON), axis=-1)
    log_amplitude = jnp.fft.fftshift(log_amplitude, axes=(1, 2))  # zero frequency at [H//2, W//2]
    rows, cols = diagonal_indices(height, width)
    diagonal = log_amplitude[:, rows, cols]
    return diagonal - diagonal[:, :1]


def relative_log_amplitude(feature_map: jax.Array) -> jax.Array:
    """[B, H, W, C] -> f32[n]: Park & Kim's relative log amplitude, 0 at zero frequency.

    The mean over the batch commutes with the diagonal and the subtraction, so this is also the
    mean of `relative_log_amplitude_per_example`, which is how batches are accumulated.
    """
    return jnp.mean(relative_log_amplitude_per_example(feature_map), axis=0)


# ---------------------------------------------------------------------------------------------
# Spectra of a whole model: one row per block, in `model.feature_map_kinds()` order.


def stack_padded(rows: Sequence[Any]) -> np.ndarray:
    """Rows of different lengths -> f32[len(rows), longest], padded with NaN at the end."""
    width = max(len(row) for row in rows)
    stacked = np.full((len(rows), width), np.nan, np.float32)
    for index, row in enumerate(rows):
        stacked[index, : len(row)] = np.asarray(row, np.float32)
    return stacked


def model_spectra(
    model: nn.Module, variables: Any, images: jax.Array, conv_strength: jax.Array | None = None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Relative log amplitude of every block's feature map: (f32[num_blocks, n], block kinds).

    Kinds: 'embedding', then 'attention'/'mlp' per ViT block, or 'convolution'/'downsampling'
    per ResNet block. For a batch too big for one pass, use `make_spectra_step`.
    """

    @jax.jit
    def rows(variables, images, conv_strength):
        _, feature_maps = models.apply_with_feature_maps(model, variables, images, conv_strength)
        return [relative_log_amplitude(f) for f in feature_maps]

    spectra = stack_padded(jax.device_get(rows(variables, images, conv_strength)))
    return spectra, tuple(model.feature_map_kinds())


def make_spectra_step(
    model: nn.Module, conv_strength_fn: Callable[[jax.Array], jax.Array]
) -> Callable[[Any, Mapping[str, jax.Array]], dict[str, Any]]:
    """(state, batch with mask) -> {'sums': per-block f32[n_b] sums over real examples, 'count'}.

    The state needs `step`, `params` and `batch_stats` (a train.TrainState). The model runs with
    the conv strengths it was last trained with (step - 1), as in train.make_eval_step.
    """

    def spectra_step(state: Any, batch: Mapping[str, jax.Array]) -> dict[str, Any]:
        variables = {"params": state.params}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats
        conv_strength = conv_strength_fn(jnp.maximum(state.step - 1, 0))
        _, feature_maps = models.apply_with_feature_maps(
            model, variables, batch["image"], conv_strength
        )
        mask = batch["mask"].astype(jnp.float32)
        sums = tuple(
            jnp.einsum("b,bn->n", mask, relative_log_amplitude_per_example(f))
            for f in feature_maps
        )
        return {"sums": sums, "count": jnp.sum(mask)}

    return spectra_step


def mean_spectra(sums: Mapping[str, Any]) -> np.ndarray:
    """The output of a spectra step (or the sum of several) -> f32[num_blocks, n], NaN-padded."""
    count = float(sums["count"])
    if count <= 0:
        raise ValueError("no example was analysed (count 0)")
    return stack_padded([np.asarray(s, np.float64) / count for s in jax.device_get(sums["sums"])])


def feature_map_shapes(model: nn.Module, variables: Any, image_size: int) -> np.ndarray:
    """int[num_blocks, 2]: (H, W) of each block's feature map, from shapes alone."""
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    maps = jax.eval_shape(lambda x: models.apply_with_feature_maps(model, variables, x)[1], images)
    return np.array([m.shape[1:3] for m in maps])


def high_frequency(spectra: np.ndarray) -> np.ndarray:
    """f32[num_blocks]: each row's last (highest-frequency) value, skipping the NaN padding.

    NaN for a map of side 1 or 2 (a ResNet's last stage at 32 px), whose diagonal holds only the
    zero frequency: it has no high-frequency value (Park & Kim's code would plot 0).
    """
    spectra = np.asarray(spectra)
    lengths = np.sum(np.isfinite(spectra), axis=1)
    values = spectra[np.arange(len(spectra)), lengths - 1]
    return np.where(lengths > 1, values, np.nan).astype(np.float32)


def normalised_depth(num_blocks: int) -> np.ndarray:
    """f32[num_blocks] from 0 (the embedding) to 1 (the last block)."""
    return np.linspace(0.0, 1.0, num_blocks, dtype=np.float32) if num_blocks > 1 else np.zeros(1)


def high_frequency_scalars(sums: Mapping[str, Any], kinds: Sequence[str]) -> dict[str, float]:
    """Metric-writer scalars from a spectra step: 'fourier/high_frequency/block_03_attention'."""
    values = high_frequency(mean_spectra(sums))
    return {
        f"fourier/high_frequency/block_{i:02d}_{kind}": float(v)
        for i, (kind, v) in enumerate(zip(kinds, values))
        if np.isfinite(v)
    }


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
    # Imported here: the train loop imports this module for its in-training spectra.
    from prs_jax import train  # pylint: disable=import-outside-toplevel

    step = checkpointing.checkpoint_step(workdir, step)
    config = checkpointing.restore_config(workdir, step)
    info = data.dataset_info(config.data)
    model = train.create_model(config, info.num_classes)
    variables, step = checkpointing.restore_variables(workdir, model, config.data.image_size, step)

    training = schedule.training_steps(
        info.num_train_examples, config.batch_size, config.num_epochs,
        config.optimizer.warmup_epochs,
    )
    conv_strength_fn = schedule.make_conv_strength_fn(
        model.num_gpsa_layers, training.steps_per_epoch, config.schedule
    )
    state = train.TrainState(
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
            freqs[finite] / np.pi, values[finite], color=colormap(norm(depth)),
            linestyle="--" if kind == "attention" else "-", marker=".", linewidth=1.2,
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
            depth[is_attention], values[is_attention], facecolors="white", edgecolors=color,
            s=18, zorder=3,
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


def default_output_dir(workdir: str, step: int) -> str:
    return os.path.join(workdir, "fourier", f"step_{step}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m prs_jax.fourier",
        description="Relative log-amplitude spectra of a run's feature maps (Park & Kim 2022).",
    )
    parser.add_argument("--workdir", help="a training run's workdir (with checkpoints/)")
    parser.add_argument(
        "--compare", nargs="+", metavar="RUN",
        help="workdirs or fourier.npz files to draw on one depth plot (needs --output_dir)",
    )
    parser.add_argument(
        "--step", type=int, help="checkpoint step, of every workdir compared (default: the latest)"
    )
    parser.add_argument("--num_images", type=int, default=1024,
                        help="evaluation images to average over (default 1024)")
    parser.add_argument("--batch_size", type=int, default=64,
                        help="images per forward pass; bounds the memory (default 64)")
    parser.add_argument(
        "--output_dir",
        help="where to write (default with --workdir: WORKDIR/fourier/step_<N>)",
    )
    args = parser.parse_args(argv)
    if bool(args.workdir) == bool(args.compare):
        parser.error("give exactly one of --workdir DIR and --compare RUN [RUN ...]")
    if args.compare and not args.output_dir:
        parser.error("--compare needs --output_dir")
    if args.num_images <= 0 or args.batch_size <= 0:
        parser.error("--num_images and --batch_size must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)

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
    results = [
        FourierResult.load_npz(run) if run.endswith(".npz") else analyse(run)
        for run in args.compare
    ]
    epath.Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    path = os.path.join(args.output_dir, COMPARE_PNG)
    plot_high_frequency(results, path)
    print(f"compared {len(results)} runs: {path}")


if __name__ == "__main__":
    # TensorFlow only reads input here: keep it off the accelerators (as prs_jax.main does).
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
    main()
