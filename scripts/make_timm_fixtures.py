r"""Make the timm reference fixtures of tests/test_convert.py: small timm models, their logits.

Run once, in an environment with PyTorch and timm (never a dependency of prs_jax):

  python3 -m venv /tmp/venv_torch
  /tmp/venv_torch/bin/pip install torch==2.13.0 safetensors numpy pyyaml huggingface_hub pillow
  /tmp/venv_torch/bin/pip install --no-deps timm==1.0.31
  /tmp/venv_torch/bin/python scripts/make_timm_fixtures.py --out tests/fixtures/timm

timm imports torchvision, whose PyPI build does not load beside the CPU build of torch. timm only
needs a few of its names at import time (FrozenBatchNorm2d, InterpolationMode, transforms for its
data loaders), none of them on the paths used here, so `import_timm` puts a stub `torchvision`
on the import path of this process only when the real one is missing. Nothing is installed.

Each fixture is a timm model of reduced size (the same code as the named model, fewer and
narrower layers) with every parameter and BatchNorm statistic redrawn so that no swapped or
transposed tensor can hide (timm's init has identity V, unit gates, zero means), written as
  NAME.safetensors   the state dict exactly as `model.state_dict()` gives it (timm names, NCHW)
  NAME.io.npz        images f32[B, H, W, 3] (NHWC, as prs_jax takes them) and timm's eval-mode
                     logits f32[B, K] for them
and manifest.json records the timm constructor arguments, the prs_jax model name and versions.
"""

from __future__ import annotations

import argparse
import enum
import importlib.abc
import importlib.machinery
import json
import math
import os
import sys
import types
from typing import Any

import numpy as np

# Reduced sizes; `prs_name` (with `prs_overrides`) is the prs_jax model the file converts to.
# ConViT's constructor multiplies embed_dim by num_heads (timm's convit_* pass embed_dim=48,
# the width of a head).
FIXTURES: dict[str, dict[str, Any]] = {
    "convit_tiny": dict(
        prs_name="convit_tiny",
        timm_name="convit_tiny",
        image_size=32,
        kwargs=dict(
            img_size=32,
            patch_size=8,
            embed_dim=8,
            num_heads=4,
            depth=3,
            local_up_to_layer=2,
            num_classes=10,
        ),
    ),
    "convit_small": dict(
        prs_name="convit_small",
        timm_name="convit_small",
        image_size=32,
        kwargs=dict(
            img_size=32,
            patch_size=8,
            embed_dim=4,
            num_heads=9,
            depth=3,
            local_up_to_layer=2,
            num_classes=10,
        ),
    ),
    "convit_base": dict(
        prs_name="convit_base",
        timm_name="convit_base",
        image_size=32,
        kwargs=dict(
            img_size=32,
            patch_size=8,
            embed_dim=2,
            num_heads=16,
            depth=3,
            local_up_to_layer=2,
            num_classes=10,
        ),
    ),
    "deit_tiny": dict(
        prs_name="deit_tiny",
        timm_name="deit_tiny_patch16_224",
        image_size=32,
        prs_overrides=dict(num_heads=3),  # a DeiT state dict does not record its heads
        kwargs=dict(img_size=32, patch_size=8, embed_dim=48, num_heads=3, depth=2, num_classes=10),
    ),
    "deit_small": dict(
        prs_name="deit_small",
        timm_name="deit_small_patch16_224",
        image_size=32,
        prs_overrides=dict(num_heads=6),
        kwargs=dict(img_size=32, patch_size=8, embed_dim=48, num_heads=6, depth=2, num_classes=10),
    ),
    # timm's ResNet stem is 64 wide whatever `channels` says: `narrow_stem` rebuilds it (and
    # layer1, whose input it feeds) at the width of the first stage, as prs_jax's `width` does.
    "resnet18": dict(
        prs_name="resnet18",
        timm_name="resnet18",
        image_size=64,
        kwargs=dict(channels=(4, 8, 16, 32), num_classes=10),
        narrow_stem="imagenet",
    ),
    "resnet50": dict(
        prs_name="resnet50",
        timm_name="resnet50",
        image_size=64,
        kwargs=dict(channels=(4, 8, 16, 32), num_classes=10),
        narrow_stem="imagenet",
    ),
    # The CIFAR stem (3x3 stride-1 conv, no max-pool) of prs_jax's CIFAR ResNets.
    "resnet18_cifar": dict(
        prs_name="resnet18",
        timm_name="resnet18",
        image_size=16,
        kwargs=dict(channels=(4, 8, 16, 32), num_classes=10),
        narrow_stem="cifar",
    ),
}
BATCH_SIZE = 2


class _Placeholder(type):
    """Any torchvision name: a class whose attributes are itself and that cannot be built."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return cls

    def __call__(cls, *args, **kwargs):
        raise NotImplementedError(f"torchvision is stubbed here: {cls.__name__} is unavailable")


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves `torchvision` and its submodules as stubs; feature_extraction stays missing, so
    timm takes its documented no-torchvision path for FX feature extraction."""

    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision.models.feature_extraction":
            return None
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []
        if module.__name__ == "torchvision.transforms.functional":
            # timm builds lookup tables from these members at import time.
            module.InterpolationMode = enum.Enum(
                "InterpolationMode", "NEAREST BILINEAR BICUBIC BOX HAMMING LANCZOS"
            )


def import_timm():
    """`import timm`, with a torchvision stub in this process if the real one does not import."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # missing, or a build that does not match this torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.meta_path.insert(0, _TorchvisionStub())
    import timm

    return timm


def narrow_stem(model, stem: str):
    """Give a timm ResNet a stem as wide as its first stage ('imagenet': 7x7/2 + max-pool;
    'cifar': 3x3/1, no pool) and rebuild layer1 with timm's make_blocks for that input width."""
    import torch
    from timm.models import resnet as timm_resnet

    width = model.layer1[0].conv1.out_channels
    block = type(model.layer1[0])
    if stem == "imagenet":
        model.conv1 = torch.nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
    else:
        model.conv1 = torch.nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        model.maxpool = torch.nn.Identity()
    model.bn1 = torch.nn.BatchNorm2d(width)
    stages, _ = timm_resnet.make_blocks(
        [block],
        [width],
        [len(model.layer1)],
        width,
        norm_layer=torch.nn.BatchNorm2d,
        act_layer=torch.nn.ReLU,
    )
    model.layer1 = stages[0][1]
    return model


def build_timm_model(name: str, seed: int = 0):
    """The fixture's timm model in eval mode, every parameter and statistic redrawn from `seed`."""

    timm = import_timm()
    spec = FIXTURES[name]
    model = timm.create_model(spec["timm_name"], pretrained=False, **spec["kwargs"])
    if "narrow_stem" in spec:
        model = narrow_stem(model, spec["narrow_stem"])
    randomize_(model, seed)
    return model.eval()


def randomize_(model, seed: int) -> None:
    """Redraw every tensor at a scale that keeps activations and logits of order one."""
    import torch

    generator = torch.Generator().manual_seed(seed)

    def normal(t, std, mean=0.0):
        return torch.randn(t.shape, generator=generator) * std + mean

    with torch.no_grad():
        for key, t in model.state_dict().items():
            leaf = key.rsplit(".", 1)[-1]
            if not t.is_floating_point():
                continue  # num_batches_tracked
            if leaf == "running_mean":
                t.copy_(normal(t, 0.1))
            elif leaf == "running_var":
                t.copy_(torch.rand(t.shape, generator=generator) + 0.5)
            elif leaf == "gating_param":
                t.copy_(normal(t, 1.0))
            elif leaf in ("cls_token", "pos_embed"):
                t.copy_(normal(t, 0.5))
            elif leaf == "weight" and t.ndim == 1:  # LayerNorm / BatchNorm scale
                t.copy_(normal(t, 0.1, 1.0))
            elif leaf == "bias":
                t.copy_(normal(t, 0.1))
            elif key.endswith("pos_proj.weight"):
                t.add_(normal(t, 0.3))  # keep ConViT's local init, perturbed
            else:  # linear and conv weights: variance 1 / fan_in
                t.copy_(normal(t, 1.0 / math.sqrt(math.prod(t.shape[1:]))))


def reference_logits(model, images_nhwc: np.ndarray) -> np.ndarray:
    """timm's eval-mode float32 logits for NHWC images."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).contiguous()
        return model(x).numpy().astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="tests/fixtures/timm")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    from safetensors.torch import save_file

    timm = import_timm()
    torch.set_num_threads(2)
    os.makedirs(args.out, exist_ok=True)
    manifest = {
        "generator": "scripts/make_timm_fixtures.py",
        "torch": torch.__version__,
        "timm": timm.__version__,
        "seed": args.seed,
        "fixtures": {},
    }
    rng = np.random.default_rng(args.seed)
    for index, (name, spec) in enumerate(FIXTURES.items()):
        model = build_timm_model(name, seed=args.seed + index)
        size = spec["image_size"]
        images = rng.standard_normal((BATCH_SIZE, size, size, 3)).astype(np.float32)
        logits = reference_logits(model, images)
        state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state_dict, os.path.join(args.out, f"{name}.safetensors"))
        np.savez(os.path.join(args.out, f"{name}.io.npz"), images=images, logits=logits)
        manifest["fixtures"][name] = {
            "prs_name": spec["prs_name"],
            "prs_overrides": spec.get("prs_overrides", {}),
            "timm_name": spec["timm_name"],
            "timm_kwargs": {
                k: list(v) if isinstance(v, tuple) else v for k, v in spec["kwargs"].items()
            },
            "narrow_stem": spec.get("narrow_stem"),
            "image_size": size,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "max_abs_logit": float(np.abs(logits).max()),
        }
        print(
            f"{name}: {manifest['fixtures'][name]['num_parameters']} parameters,"
            f" max |logit| {manifest['fixtures'][name]['max_abs_logit']:.3f}"
        )
    with open(os.path.join(args.out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
