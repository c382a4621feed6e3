"""timm's model of the same configuration, trained with the same recipe, for the benchmark's
--vs-timm (optional: needs torch and timm)."""

from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.machinery
import importlib.util
import math
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from prs_jax import models
from prs_jax.method import optimizer
from prs_jax.training import config_lib


def _stub_torchvision() -> None:
    """Let timm import without torchvision, which PyPI's wheels cannot install beside every torch.

    timm imports torchvision at module level in its data and layer helpers, none of which a
    ViT/ConViT forward or backward uses. When torchvision is missing, a placeholder package
    answers those imports (attributes are inert classes); it is installed only here, only then.
    """
    if importlib.util.find_spec("torchvision") is not None:
        return

    class Placeholder(type):
        def __getattr__(cls, name: str) -> str:
            if name.startswith("__"):
                raise AttributeError(name)
            return f"{cls.__name__}.{name}"

    class StubModule(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            value = Placeholder(name, (), {})
            setattr(self, name, value)
            return value

    class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path, target=None):  # noqa: D401
            if fullname == "torchvision" or fullname.startswith("torchvision."):
                return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            return None

        def create_module(self, spec):
            return StubModule(spec.name)

        def exec_module(self, module):
            module.__path__ = []

    sys.meta_path.insert(0, Finder())


def import_timm() -> types.ModuleType:
    """`import timm`, with the torchvision placeholder of `_stub_torchvision` where it is missing."""
    _stub_torchvision()
    import timm  # pylint: disable=import-outside-toplevel

    return timm


def timm_kwargs(config: ml_collections.ConfigDict, num_classes: int) -> tuple[str, dict[str, Any]]:
    """timm's model name and arguments for the config's ViT (sizes from our named variant)."""
    fields = {**models.VIT_VARIANTS[config.model.name], **config_lib.model_overrides(config.model)}
    common = dict(
        img_size=config.data.image_size,
        patch_size=fields["patch_size"],
        num_classes=num_classes,
        depth=fields["depth"],
        num_heads=fields["num_heads"],
        mlp_ratio=fields.get("mlp_ratio", 4.0),
        drop_path_rate=fields.get("drop_path_rate", 0.0),
    )
    if fields["num_gpsa_layers"] > 0:
        # timm's ConViT multiplies embed_dim by num_heads.
        return "convit_tiny", dict(
            common,
            embed_dim=fields["hidden_size"] // fields["num_heads"],
            local_up_to_layer=fields["num_gpsa_layers"],
            locality_strength=fields.get("locality_strength", 1.0),
        )
    return "deit_tiny_patch16_224", dict(
        common, embed_dim=fields["hidden_size"], qkv_bias=fields.get("qkv_bias", True)
    )


def timm_mixup(augment: ml_collections.ConfigDict, num_classes: int) -> Callable[[Any, Any], Any]:
    """timm's Mixup (batch mode) for the config's mixing and label smoothing: (images, labels) ->
    (images, soft targets); smoothed labels alone where nothing is mixed."""
    from timm.data import Mixup  # pylint: disable=import-outside-toplevel
    from timm.data.mixup import mixup_target  # pylint: disable=import-outside-toplevel

    if augment.mix_prob > 0 and (augment.mixup_alpha > 0 or augment.cutmix_alpha > 0):
        return Mixup(
            mixup_alpha=augment.mixup_alpha,
            cutmix_alpha=augment.cutmix_alpha,
            prob=augment.mix_prob,
            switch_prob=augment.switch_prob,
            label_smoothing=augment.label_smoothing,
            num_classes=num_classes,
        )

    # timm's Mixup refuses to be built with nothing to mix: smoothed labels only.
    def smooth(images, labels):
        return images, mixup_target(labels, num_classes, smoothing=augment.label_smoothing)

    return smooth


def timm_step(
    config: ml_collections.ConfigDict, num_classes: int
) -> tuple[Callable[[], None], Callable[[], None], str]:
    """A timm train step of the same model and recipe (mixup/cutmix, smoothing, AdamW, clip):
    (step, synchronize, description), warmed up by two steps."""
    import torch  # pylint: disable=import-outside-toplevel

    timm = import_timm()
    from timm.loss import SoftTargetCrossEntropy  # pylint: disable=import-outside-toplevel
    from timm.optim import create_optimizer_v2  # pylint: disable=import-outside-toplevel

    name, kwargs = timm_kwargs(config, num_classes)
    model = timm.create_model(name, **kwargs)
    model.train()
    opt = config.optimizer
    tx = create_optimizer_v2(
        model,
        "adamw",
        lr=optimizer.resolve_learning_rate(opt, config.batch_size)[0],  # train.py's peak rate
        weight_decay=opt.weight_decay,
        betas=(opt.b1, opt.b2),
        eps=opt.eps,
    )
    mixup = timm_mixup(config.augment, num_classes)
    criterion = SoftTargetCrossEntropy()
    # Same hardware as ours: CUDA when JAX runs on a GPU, with bfloat16 autocast where our
    # compute dtype is bfloat16 (parameters stay float32 in both).
    device = torch.device(
        "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    )
    model.to(device)
    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=config.model.dtype == "bfloat16"
    )
    size = config.data.image_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(config.batch_size, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, num_classes, (config.batch_size,), generator=generator).to(device)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step() -> None:
        mixed, targets = mixup(images.clone(), labels)
        with autocast:
            loss = criterion(model(mixed), targets)
        tx.zero_grad(set_to_none=True)
        loss.backward()
        if opt.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip_norm)
        tx.step()

    for _ in range(2):
        step()
    synchronize()
    where = (
        f"on {torch.cuda.get_device_name(device)}"
        if device.type == "cuda"
        else f"{torch.get_num_threads()} threads"
    )
    description = (
        f"timm {timm.__version__} {name}({', '.join(f'{k}={v}' for k, v in kwargs.items())}),"
        f" torch {torch.__version__}, {where}"
        f"{', bfloat16 autocast' if config.model.dtype == 'bfloat16' else ''}"
    )
    return step, synchronize, description


def timm_runner(
    config: ml_collections.ConfigDict, num_classes: int, num_steps: int
) -> tuple[Callable[[], float], str]:
    """(callable returning seconds per timm train step over `num_steps` steps, description)."""
    step, synchronize, description = timm_step(config, num_classes)

    def run() -> float:
        start = time.perf_counter()
        for _ in range(num_steps):
            step()
        synchronize()
        return (time.perf_counter() - start) / num_steps

    return run, description


# aten operators that run a matmul (torch.profiler counts their FLOPs): what the CPU spends at
# the matmul library's rate; everything else is elementwise, reduction and copy work.
TORCH_MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::convolution")


@dataclasses.dataclass(frozen=True)
class TimmProfile:
    """Per train step: wall seconds, seconds and FLOPs in matmuls, own seconds of every other
    aten operator."""

    wall_s: float
    matmul_s: float
    matmul_flops: float
    other_s: dict[str, float]


def profile_timm_step(step: Callable[[], None], num_steps: int) -> TimmProfile:
    """Profile `num_steps` calls of a torch train step twice: once counting FLOPs (torch's FLOP
    counter records shapes, which doubled the step time of ConViT-Ti on a 2-core CPU) and once
    for the times alone (4% above the unprofiled step there)."""
    from torch import profiler  # pylint: disable=import-outside-toplevel

    def trace(with_flops: bool) -> tuple[Any, float]:
        start = time.perf_counter()
        with profiler.profile(
            activities=[profiler.ProfilerActivity.CPU], with_flops=with_flops
        ) as prof:
            for _ in range(num_steps):
                step()
        return prof.key_averages(), (time.perf_counter() - start) / num_steps

    counted, _ = trace(with_flops=True)
    timed, wall = trace(with_flops=False)
    matmul_flops = sum(event.flops for event in counted) / num_steps
    matmul_s, other_s = 0.0, {}
    # Self time: an operator's time less that of the operators it calls, so nothing counts twice.
    for event in timed:
        seconds = event.self_cpu_time_total / 1e6 / num_steps
        if event.key in TORCH_MATMUL_OPS:
            matmul_s += seconds
        else:
            other_s[event.key] = other_s.get(event.key, 0.0) + seconds
    return TimmProfile(wall, matmul_s, matmul_flops, other_s)


def profile_timm(
    config: ml_collections.ConfigDict, num_classes: int, num_steps: int, matmul_rate: float
) -> str:
    """Where timm's train step spends its time, split as `--profile` splits ours: matmuls with
    their FLOP rate against the yardstick `matmul_rate` (FLOP/s, all cores), and the largest
    other operators by their own time."""
    step, synchronize, _ = timm_step(config, num_classes)
    profile = profile_timm_step(step, num_steps)
    synchronize()
    other_s = sum(profile.other_s.values())
    rate = profile.matmul_flops / profile.matmul_s if profile.matmul_s else 0.0
    lines = [
        f"time per step: {profile.wall_s * 1e3:.1f} ms (profiled)",
        f"  matmuls (aten mm/addmm/bmm)      {profile.matmul_s * 1e3:8.1f} ms"
        f"  {profile.matmul_flops / 1e9:.1f} GFLOP at {rate / 1e9:.1f} GFLOP/s"
        f" = {rate / matmul_rate:.0%} of the (XLA) matmul rate",
        f"  other operators (own time)       {other_s * 1e3:8.1f} ms",
        f"  outside operators (Python)       {(profile.wall_s - profile.matmul_s - other_s) * 1e3:8.1f} ms",
        "  largest other operators:",
    ]
    for key, seconds in sorted(profile.other_s.items(), key=lambda item: -item[1])[:10]:
        lines.append(f"    {seconds * 1e3:8.1f} ms  {key}")
    return "\n".join(lines)


def torch_matmul_rate(size: int, repeats: int = 5) -> tuple[float, str]:
    """(FLOP/s of torch's n^3 float32 matmul on all its threads, best of `repeats`; description):
    the yardstick of the library that timm's matmuls run on, beside XLA's."""
    import torch  # pylint: disable=import-outside-toplevel

    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator) for _ in range(2))
    a @ b  # pylint: disable=pointless-statement
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b  # pylint: disable=pointless-statement
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best, f"torch {torch.__version__}, {torch.get_num_threads()} threads"


def timm_available() -> str | None:
    """None if torch and timm can be imported, else why not."""
    for module in ("torch", "timm"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    return None
