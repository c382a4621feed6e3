"""prs_jax's initial distributions against timm's, tensor by tensor (mean, std, bounds).

The step comparison starts both sides from the same weights, so it cannot see a difference in
how weights are drawn; this can. Ours are `training.state.initial_state`'s (the run's own init,
from config.seed); timm's are its constructor's (torch.manual_seed(config.seed)), for the same
sizes (`reference.build_model`; a ResNet with timm's default zero_init_last=True). Each tensor
is "same" when both are the same constant, or when their std and means agree within three
standard errors of a sample (at least 10% and 0.05 std) and, from 1,000 elements, their
shapes (a uniform is not a normal of the same std); otherwise it is a difference,
and `DECISIONS` says which it is and why it stays (or that it is undecided, which fails the
test).
"""

from __future__ import annotations

import dataclasses
import math
import re

import ml_collections
import numpy as np
import optax

from prs_jax.models import resnet, timm_weights
from prs_jax.tools.parity import reference as torch_reference
from prs_jax.training.state import create_model, initial_state

# Known differences, by timm key: (pattern, decision). Each one was looked at and is kept.
DECISIONS: tuple[tuple[str, str], ...] = (
    (
        r"patch_embed\.proj\.bias",
        "ours zeros, timm PyTorch's Conv2d default U(+-1/sqrt(fan_in)); kept: Flax's Conv"
        " default and vit_jax's, and the first steps move it from either start alike",
    ),
    (
        r"cls_token",
        "DeiT: ours N(0, 0.02) as DeiT's own code (timm 0.3) draws it, timm 1.x N(0, 1e-6);"
        " ConViT: the same N(0, 0.02) on both sides. Kept: the published DeiT recipe",
    ),
    (
        r".*\.bn2\.weight|.*\.bn3\.weight",
        "ResNet: ours ones (torchvision's default, zero_init_residual=False), timm's"
        " zero_init_last=True zeros the last BatchNorm of each block; kept (torchvision, and"
        " `--config.model.zero_init_residual=true` gives timm's)",
    ),
)


@dataclasses.dataclass(frozen=True)
class Stats:
    size: int
    mean: float
    std: float
    low: float
    high: float

    @classmethod
    def of(cls, array: np.ndarray) -> Stats:
        array = np.asarray(array, np.float64).ravel()
        std = array.std()
        shape = np.abs(array - array.mean()).mean() / std if std else 0.0
        return cls(array.size, array.mean(), std, array.min(), array.max(), shape)

    shape: float  # mean |x - mean| / std


@dataclasses.dataclass(frozen=True)
class Row:
    key: str
    ours: Stats
    theirs: Stats
    same: bool
    decision: str | None


def same_distribution(ours: Stats, theirs: Stats) -> bool:
    if ours.std == 0 or theirs.std == 0:
        return ours.std == theirs.std and ours.low == theirs.low and ours.high == theirs.high
    size = min(ours.size, theirs.size)
    # Three standard errors of a sample's std (std / sqrt(2 n)) and of the difference of two
    # means, with floors for large tensors.
    same = abs(ours.std / theirs.std - 1) <= max(0.1, 3 / math.sqrt(2 * size)) and abs(
        ours.mean - theirs.mean
    ) <= theirs.std * max(0.05, 3 * math.sqrt(1 / ours.size + 1 / theirs.size))
    # The shape, from 1,000 elements: mean |x - mean| / std is 0.80 for a normal, 0.87 for a
    # uniform, 0.76 for a normal cut at 2 std (the largest element is too noisy a measure).
    return same and (size < 1000 or abs(ours.shape - theirs.shape) <= 0.03)


def decision(key: str) -> str | None:
    return next((text for pattern, text in DECISIONS if re.fullmatch(pattern, key)), None)


def compare(config: ml_collections.ConfigDict, num_classes: int) -> list[Row]:
    import torch  # pylint: disable=import-outside-toplevel

    model = create_model(config, num_classes)
    state = initial_state(model, optax.identity(), config.data.image_size, config.seed)
    ours = timm_weights.prs_to_timm({"params": state.params, "batch_stats": state.batch_stats})
    torch.manual_seed(config.seed)
    reference = torch_reference.build_model(model, config, num_classes)
    if isinstance(model, resnet.ResNet):
        reference.init_weights(zero_init_last=True)  # timm's default
    theirs = torch_reference.state_arrays(reference)
    rows = []
    for key in theirs:
        a, b = Stats.of(ours[key]), Stats.of(theirs[key])
        same = same_distribution(a, b)
        rows.append(Row(key, a, b, same, None if same else decision(key)))
    return rows


def report(config: ml_collections.ConfigDict, num_classes: int) -> str:
    rows = compare(config, num_classes)
    lines = [
        f"{'tensor':<34} {'n':>7}  {'ours: mean':>10} {'std':>8} {'bounds':>17}"
        f"  {'timm: mean':>10} {'std':>8} {'bounds':>17}  verdict"
    ]
    for row in rows:
        verdict = "same" if row.same else ("kept: " + row.decision if row.decision else "UNDECIDED")
        lines.append(
            f"{row.key:<34} {row.ours.size:>7}  {_stats(row.ours)}  {_stats(row.theirs)}  {verdict}"
        )
    differing = [r for r in rows if not r.same]
    lines.append(
        f"{len(rows)} tensors, {len(differing)} drawn differently"
        f" ({sum(r.decision is None for r in differing)} undecided)"
    )
    return "\n".join(lines)


def _stats(stats: Stats) -> str:
    return f"{stats.mean:>10.2e} {stats.std:>8.2e} [{stats.low:>7.2e}, {stats.high:>7.2e}]"
