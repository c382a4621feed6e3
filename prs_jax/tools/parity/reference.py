"""The PyTorch side of the parity harness: timm's model of a config and the recipe's train step,
written with torch and timm only, independently of prs_jax.method.

- Model: timm's ConVit (GPSA variants) or VisionTransformer (the DeiT twin) of the same sizes
  (`timm_bench.timm_kwargs`), or timm's ResNet with the config's width and stem (the CIFAR stem
  is a 3x3 stride-1 conv and no max-pool, as in prs_jax.models.resnet). prs_jax's initial
  variables go in through the converter (`prs_to_timm`), strictly.
- PRS: timm's GPSA has no conv strength. `ConvStrength` gives each GPSA layer one: its attention
  becomes (1 - s) A + s P, where A is timm's own ConViT attention (1 - sigmoid(lambda)) C +
  sigmoid(lambda) P and P the positional one; that is (1 - g) C + g P with
  g = s + (1 - s) sigmoid(lambda), the PRS gate. At s = 1 the content path's gradients are 0.
- The resting content path: while layer l has s = 1, its qk weights and gate leave PyTorch's
  step altogether (their .grad is None, so AdamW neither decays them nor updates a moment), and
  their Adam state is created at their first step after the switch: a fresh Adam, whose bias
  correction counts the layer's own steps. prs_jax.method.optimizer's paused AdamW is compared
  with this, not with itself.
- Optimizer: timm's create_optimizer_v2(model, 'adamw') (torch.optim.AdamW; no decay on 1-D
  parameters, biases and model.no_weight_decay(): pos_embed, cls_token), as DeiT builds it;
  the per-step learning rate from timm's CosineLRScheduler counted in steps (warmup_t, lr_min,
  warmup_lr_init, t_initial = the run).
- Mixing: timm's Mixup (batch mode) and SoftTargetCrossEntropy; Mixup's random numbers (lam,
  cutmix or mixup, the box) are given to it (`MixDraw`) instead of drawn, so both sides mix
  alike.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any
from unittest import mock

import ml_collections
import numpy as np

from prs_jax.models import resnet, timm_weights
from prs_jax.tools.timm_bench import import_timm, timm_kwargs, timm_mixup

# A GPSA layer's content path, by timm name inside its attention module (prs_jax calls the same
# tensors blocks_L/attn/qk/* and blocks_L/attn/gating_param).
CONTENT_PATH = ("qk.weight", "qk.bias", "gating_param")


@dataclasses.dataclass(frozen=True)
class MixDraw:
    """One batch's mixing numbers: whether the batch is mixed, cutmix or mixup, the Beta draws
    and the cut box (y_low, y_high, x_low, x_high), half-open."""

    apply: bool
    use_cutmix: bool
    lam_mixup: float
    lam_cutmix: float
    box: tuple[int, int, int, int]

    @property
    def lam(self) -> float:
        """The lam timm's Mixup would have drawn (before cutmix's area correction)."""
        if not self.apply:
            return 1.0
        return self.lam_cutmix if self.use_cutmix else self.lam_mixup


def build_model(model: Any, config: ml_collections.ConfigDict, num_classes: int):
    """timm's model of the same sizes as the prs_jax `model` built from `config`."""
    timm = import_timm()
    if isinstance(model, resnet.ResNet):
        return _timm_resnet(model)
    name, kwargs = timm_kwargs(config, num_classes)
    return timm.create_model(name, pretrained=False, **kwargs)


def _timm_resnet(model: resnet.ResNet):
    """timm's ResNet at the model's width and stem. timm's stem is 64 wide whatever the stages
    (so is torchvision's): for another width its conv1, bn1 and layer1 are rebuilt with timm's
    own make_blocks, as wide as the first stage, and timm's init_weights is applied again."""
    import torch  # pylint: disable=import-outside-toplevel
    from timm.models import resnet as timm_resnet  # pylint: disable=import-outside-toplevel

    block = {"basic": timm_resnet.BasicBlock, "bottleneck": timm_resnet.Bottleneck}[model.block]
    width = model.width
    reference = timm_resnet.ResNet(
        block,
        tuple(model.stage_sizes),
        num_classes=model.num_classes,
        channels=tuple(width * 2**stage for stage in range(len(model.stage_sizes))),
        zero_init_last=model.zero_init_residual,
    )
    if model.stem == "cifar":
        reference.conv1 = torch.nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        reference.maxpool = torch.nn.Identity()
    else:
        reference.conv1 = torch.nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
    reference.bn1 = torch.nn.BatchNorm2d(width)
    stages, _ = timm_resnet.make_blocks(
        (block,),
        (width,),
        (model.stage_sizes[0],),
        width,
        act_layer=torch.nn.ReLU,
        norm_layer=torch.nn.BatchNorm2d,
    )
    reference.layer1 = stages[0][1]
    reference.init_weights(zero_init_last=model.zero_init_residual)
    return reference


def load_variables(reference, variables: Mapping[str, Any]) -> None:
    """prs_jax variables {'params', 'batch_stats'} into the timm model, every key required."""
    import torch  # pylint: disable=import-outside-toplevel

    state_dict = timm_weights.prs_to_timm(variables)
    reference.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, strict=True
    )


def state_arrays(reference) -> dict[str, np.ndarray]:
    """The timm model's parameters and BatchNorm statistics as float32 numpy, by timm key."""
    return {
        key: value.detach().cpu().numpy().astype(np.float32, copy=True)
        for key, value in reference.state_dict().items()
        if not key.endswith("num_batches_tracked")
    }


def gpsa_layers(reference) -> int:
    """The number of GPSA blocks of a timm ConVit (0 for other models)."""
    blocks = getattr(reference, "blocks", ())
    return sum(hasattr(block.attn, "gating_param") for block in blocks)


class ConvStrength:
    """PRS's conv strength s for each GPSA layer of a timm ConVit; `set` it before each step."""

    def __init__(self, reference, num_layers: int):
        import torch  # pylint: disable=import-outside-toplevel

        self.values = torch.zeros(num_layers)
        for layer in range(num_layers):
            attention = reference.blocks[layer].attn
            attention.get_attention = functools.partial(
                _prs_attention, attention, attention.get_attention, self.values, layer
            )

    def set(self, conv_strength: Sequence[float]) -> None:
        import torch  # pylint: disable=import-outside-toplevel

        self.values.copy_(torch.tensor(np.asarray(conv_strength, np.float32)))


def _prs_attention(attention, convit_attention, strengths, layer, x):
    """(1 - s) A_ConViT(x) + s P = (1 - g) C + g P with g = s + (1 - s) sigmoid(lambda)."""
    s = strengths[layer]
    positional = attention.pos_proj(attention.rel_indices.expand(x.shape[0], -1, -1, -1))
    positional = positional.permute(0, 3, 1, 2).softmax(dim=-1)
    return (1.0 - s) * convit_attention(x) + s * positional


def content_path(reference, num_layers: int) -> list[list[Any]]:
    """Per GPSA layer, the parameters of its content path (qk projection and gate)."""
    return [
        [
            parameter
            for name, parameter in reference.blocks[layer].attn.named_parameters()
            if name in CONTENT_PATH
        ]
        for layer in range(num_layers)
    ]


class InjectedMixup:
    """timm's Mixup (`timm_bench.timm_mixup`: batch mode, label smoothing) with its random
    numbers given per call."""

    def __init__(self, augment: ml_collections.ConfigDict, num_classes: int):
        from timm.data import mixup  # pylint: disable=import-outside-toplevel

        self._module = mixup
        self._mixup = timm_mixup(augment, num_classes)
        self._draw: MixDraw | None = None
        if isinstance(self._mixup, mixup.Mixup):
            self._mixup._params_per_batch = lambda: (self._draw.lam, self._draw.use_cutmix)

    def __call__(self, images, labels, draw: MixDraw):
        """(mixed images, soft targets) from images [B, C, H, W] and integer labels [B]."""
        self._draw = draw
        # The box is ours (timm >= 1.0's rand_bbox makes an odd side one pixel longer than the
        # timm 0.3 that DeiT and ConViT were published with, and prs_jax follows); timm still
        # corrects lam to the box's area and pastes it.
        with mock.patch.object(self._module, "rand_bbox", lambda *args, **kwargs: draw.box):
            return self._mixup(images.clone(), labels)


@dataclasses.dataclass
class StepResult:
    loss: float
    grad_norm: float
    learning_rate: float
    mixed_images: np.ndarray  # [B, H, W, C], as prs_jax lays images out
    targets: np.ndarray


class ReferenceTrainer:
    """timm's model trained with the config's recipe in PyTorch, one step at a time."""

    def __init__(
        self,
        reference,
        config: ml_collections.ConfigDict,
        num_classes: int,
        *,
        peak_learning_rate: float,
        total_steps: int,
        warmup_steps: int,
    ):
        from timm.loss import SoftTargetCrossEntropy  # pylint: disable=import-outside-toplevel
        from timm.optim import create_optimizer_v2  # pylint: disable=import-outside-toplevel
        from timm.scheduler import CosineLRScheduler  # pylint: disable=import-outside-toplevel

        opt = config.optimizer
        self.model = reference.train()
        self.num_layers = gpsa_layers(reference)
        self.conv_strength = ConvStrength(reference, self.num_layers) if self.num_layers else None
        self.content_path = content_path(reference, self.num_layers)
        self.rest_content_path = bool(opt.pause_content_path_while_conv)
        self.grad_clip_norm = opt.grad_clip_norm
        self.optimizer = create_optimizer_v2(
            reference,
            "adamw",
            lr=peak_learning_rate,
            weight_decay=opt.weight_decay,
            betas=(opt.b1, opt.b2),
            eps=opt.eps,
        )
        self.scheduler = CosineLRScheduler(
            self.optimizer,
            t_initial=max(total_steps, 1),
            lr_min=opt.min_learning_rate,
            warmup_t=warmup_steps,
            warmup_lr_init=opt.warmup_learning_rate,
            t_in_epochs=False,
        )
        self.mixup = InjectedMixup(config.augment, num_classes)
        self.criterion = SoftTargetCrossEntropy()

    def step(
        self,
        step: int,
        images: np.ndarray,
        labels: np.ndarray,
        draw: MixDraw,
        conv_strength: Sequence[float],
    ) -> StepResult:
        """One optimizer step on images [B, H, W, C] (prs_jax's layout) and labels [B]."""
        import torch  # pylint: disable=import-outside-toplevel

        self.scheduler.step_update(step)
        resting = []
        if self.conv_strength is not None:
            self.conv_strength.set(conv_strength)
            if self.rest_content_path:
                resting = [
                    p for s, ps in zip(conv_strength, self.content_path) if s >= 1.0 for p in ps
                ]
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        mixed, targets = self.mixup(x, torch.from_numpy(np.asarray(labels, np.int64)), draw)
        loss = self.criterion(self.model(mixed), targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        grad_norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        for parameter in resting:  # out of this step: no decay, no moment, no count
            parameter.grad = None
        if self.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
        self.optimizer.step()
        return StepResult(
            loss=float(loss.detach()),
            grad_norm=grad_norm,
            learning_rate=float(self.optimizer.param_groups[0]["lr"]),
            mixed_images=mixed.detach().numpy().transpose(0, 2, 3, 1),
            targets=targets.detach().numpy(),
        )
