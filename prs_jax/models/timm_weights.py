"""Interop with timm: ConViT, DeiT and ResNet state dicts <-> prs_jax variables (the command is
prs_jax.convert; training starts from converted weights through `load_into`).

One name map serves both directions: a prs_jax path becomes a timm key by `timm_key`
(`blocks_3/attn/qk/kernel` -> `blocks.3.attn.qk.weight`, `layer1_0/downsample_bn/mean` ->
`layer1.0.downsample.1.running_mean`) and a tensor changes layout by a transpose only: Dense
kernels [in, out] <-> Linear weights [out, in] (the fused QK and QKV outputs are ordered
(2 or 3, head, head_dim) in both), Conv kernels HWIO <-> OIHW, LayerNorm and BatchNorm scale <->
weight, BatchNorm mean/var (collection `batch_stats`) <-> running_mean/running_var
(`num_batches_tracked` is dropped). Everything else is the same tensor: ConViT's GPSA gating_param
and pos_proj (both use r_ij = (dx, dy, dx^2 + dy^2), see gpsa.relative_indices), the class token,
and the position embedding, which covers the patch grid only in ConViT (the class token joins
after the GPSA blocks) and also the class token in DeiT; the model of the target says which.

Import is strict: every key and shape of the file must be what the target model expects (else
`StateDictMismatchError` lists the missing, unexpected and mis-shaped keys), except two changes
vit_jax's checkpoint loader also makes: a position embedding on another patch grid is resized
(the class-token slot kept aside), and a head for another number of classes is re-initialised.

timm builds ConViT and DeiT with LayerNorm eps 1e-6 (timm.layers.LayerNorm; ConViT's original
code uses the same), prs_jax's default; the eps is not in a state dict, so `infer_model_fields`
sets it explicitly. Reading `.safetensors` needs only numpy; `.pth`/`.bin` files need torch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from prs_jax import models
from prs_jax.errors import UserError
from prs_jax.models.vit import VIT_VARIANTS

Variables = dict[str, Any]  # {'params': ..., 'batch_stats': ...} as nested dicts
StateDict = dict[str, np.ndarray]

# timm's LayerNorm default (timm.layers.LayerNorm), used by its ConViT and VisionTransformer.
TIMM_LAYER_NORM_EPSILON = 1e-6
# The classifier of a ViT and of a ResNet; re-initialised when the number of classes changes.
HEAD_KEYS = ("head.weight", "head.bias", "fc.weight", "fc.bias")
PRS_FORMAT = "prs_jax"  # `format` in the metadata of a prs_jax variables file


class StateDictMismatchError(UserError, ValueError):
    """A state dict that does not fit the target model; lists every mismatched key."""

    def __init__(
        self,
        missing: Sequence[str],
        unexpected: Sequence[str],
        wrong_shapes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]],
        hint: str = "",
    ):
        self.missing, self.unexpected = sorted(missing), sorted(unexpected)
        self.wrong_shapes = dict(sorted(wrong_shapes.items()))
        lines = ["the state dict does not fit the target model" + (f" ({hint})" if hint else "")]
        if self.missing:
            lines.append(
                f"missing keys ({len(self.missing)}): " + ", ".join(_compact(self.missing))
            )
        if self.unexpected:
            lines.append(
                f"unexpected keys ({len(self.unexpected)}): " + ", ".join(_compact(self.unexpected))
            )
        if self.wrong_shapes:
            lines.append(
                f"wrong shapes ({len(self.wrong_shapes)}): "
                + ", ".join(
                    f"{k} {list(got)} (expected {list(want)})"
                    for k, (got, want) in self.wrong_shapes.items()
                )
            )
        super().__init__("\n  ".join(lines))


def _compact(keys: Sequence[str]) -> list[str]:
    """Keys that differ only in a block index, written once: 'blocks.{0-9}.attn.qk.weight'."""
    groups: dict[str, list[int]] = {}
    for key in keys:
        match = re.search(r"\.(\d+)\.", key)
        if match is None:
            groups.setdefault(key, [])
        else:
            pattern = key[: match.start()] + ".{}." + key[match.end() :]
            groups.setdefault(pattern, []).append(int(match.group(1)))
    compact = []
    for pattern, indices in groups.items():
        if len(indices) < 2:
            compact.append(pattern.format(*indices) if indices else pattern)
            continue
        indices = sorted(indices)
        span = (
            f"{indices[0]}-{indices[-1]}"
            if indices == list(range(indices[0], indices[-1] + 1))
            else ",".join(map(str, indices))
        )
        compact.append(pattern.replace("{}", "{" + span + "}"))
    return sorted(compact)


# --- Files ---------------------------------------------------------------------------------


def read_state_dict(path: str) -> StateDict:
    """A timm state dict as float32 numpy arrays: `.safetensors` (numpy only) or `.pth`/`.bin`/
    `.pt` (needs torch; a checkpoint dict's 'model' or 'state_dict' entry is used)."""
    if path.endswith(".safetensors"):
        tensors = load_file(path)
    else:
        try:
            import torch
        except ImportError as error:
            raise ImportError(
                f"reading {path} needs PyTorch; convert it once to .safetensors where torch is"
                " installed (python -m prs_jax.convert to-prs ...), or install torch"
            ) from error
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        for entry in ("model", "state_dict", "model_state_dict"):
            if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(entry), Mapping):
                checkpoint = checkpoint[entry]
                break
        tensors = {
            k.removeprefix("module."): (
                v.detach().cpu().float().numpy()
                if v.is_floating_point()
                else v.detach().cpu().numpy()
            )
            for k, v in checkpoint.items()
            if isinstance(v, torch.Tensor)
        }
    return {k: _as_float32(v) for k, v in tensors.items()}


def write_state_dict(
    state_dict: Mapping[str, np.ndarray], path: str, metadata: Mapping[str, str] | None = None
) -> None:
    """Write tensors to a `.safetensors` file (loadable by `safetensors.torch.load_file`)."""
    save_file(
        {k: np.ascontiguousarray(v) for k, v in state_dict.items()},
        path,
        metadata=dict(metadata) if metadata else None,
    )


def save_variables(path: str, variables: Variables, model_fields: Mapping[str, Any]) -> None:
    """prs_jax variables (keys like 'params/blocks_0/attn/qk/kernel') and the model that they
    belong to (`name` plus create_model's keyword arguments) in one `.safetensors` file."""
    flat = traverse_util.flatten_dict(variables, sep="/")
    metadata = {"format": PRS_FORMAT, "model": json.dumps(dict(model_fields), sort_keys=True)}
    write_state_dict({k: np.asarray(v) for k, v in flat.items()}, path, metadata)


def load_variables(path: str) -> tuple[Variables, dict[str, Any]]:
    """(variables, model_fields) from a file written by `save_variables`."""
    metadata = _metadata(path)
    if metadata.get("format") != PRS_FORMAT:
        raise ValueError(f"{path} is not a prs_jax variables file (use read_state_dict for timm's)")
    variables = traverse_util.unflatten_dict(load_file(path), sep="/")
    return variables, json.loads(metadata["model"])


def create_model_from_fields(model_fields: Mapping[str, Any]):
    """`create_model` from the fields saved with a variables file ({'name': ..., ...})."""
    fields = dict(model_fields)
    return models.create_model(fields.pop("name"), **fields)


def _metadata(path: str) -> dict[str, str]:
    """The `__metadata__` of a safetensors file (its JSON header), without reading tensors."""
    if not path.endswith(".safetensors"):
        return {}
    with open(path, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(header_size)).get("__metadata__") or {}


def _as_float32(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    return array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array


# --- Names and layouts ---------------------------------------------------------------------

_MODULE_NAMES = (
    (re.compile(r"^blocks_(\d+)$"), r"blocks.\1"),
    (re.compile(r"^layer(\d+)_(\d+)$"), r"layer\1.\2"),
    (re.compile(r"^patch_embed$"), "patch_embed.proj"),
    (re.compile(r"^downsample_conv$"), "downsample.0"),
    (re.compile(r"^downsample_bn$"), "downsample.1"),
)
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}


def timm_key(path: Sequence[str]) -> str:
    """The timm key of a prs_jax parameter path, e.g. ('blocks_0', 'attn', 'qk', 'kernel') ->
    'blocks.0.attn.qk.weight'. The collection ('params' or 'batch_stats') is not part of it."""
    *modules, leaf = path
    names = []
    for module in modules:
        for pattern, replacement in _MODULE_NAMES:
            if pattern.match(module):
                module = pattern.sub(replacement, module)
                break
        names.append(module)
    return ".".join(names + [_LEAF_NAMES.get(leaf, leaf)])


def _timm_axes(path: Sequence[str], ndim: int) -> tuple[int, ...] | None:
    """The transpose that takes a prs_jax tensor to timm's layout (None: the same layout)."""
    if path[-1] != "kernel":
        return None
    if ndim == 2:
        return (1, 0)  # Dense [in, out] -> Linear [out, in]
    if ndim == 4:
        return (3, 2, 0, 1)  # Conv HWIO -> OIHW
    raise ValueError(f"no timm layout for a {ndim}-d kernel at {'/'.join(path)}")


def _from_timm_axes(axes: tuple[int, ...] | None) -> tuple[int, ...] | None:
    return None if axes is None else tuple(int(i) for i in np.argsort(axes))


def _flat_variables(variables: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
    """{(collection, *path): leaf} for the 'params' and 'batch_stats' collections."""
    flat = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in traverse_util.flatten_dict(dict(variables.get(collection) or {})).items():
            flat[(collection,) + path] = leaf
    return flat


def expected_timm_shapes(variables: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The timm keys and shapes that `variables` (arrays or ShapeDtypeStructs) convert to."""
    shapes = {}
    for (_, *path), leaf in _flat_variables(variables).items():
        axes = _timm_axes(path, len(leaf.shape))
        shape = tuple(leaf.shape)
        shapes[timm_key(path)] = shape if axes is None else tuple(shape[i] for i in axes)
    return shapes


# --- Export --------------------------------------------------------------------------------


def prs_to_timm(
    variables: Mapping[str, Any],
    *,
    conv_strength: float | Sequence[float] | np.ndarray | None = None,
) -> StateDict:
    """A timm state dict (float32 numpy) from prs_jax variables {'params', 'batch_stats'}.

    timm's ConViT is prs_jax's model at conv strength 0. Pass the conv strength f32[L] (or one
    value for every GPSA layer) the model was used at to bake it into the gates:
    lambda' = logit(s + (1 - s) sigmoid(lambda)) makes timm's sigmoid(lambda') the PRS gate
    exactly (s = 1 gives lambda' = inf: a pure convolution).
    """
    state_dict = {}
    for (_, *path), leaf in _flat_variables(variables).items():
        array = np.asarray(leaf, np.float32)
        axes = _timm_axes(path, array.ndim)
        state_dict[timm_key(path)] = np.ascontiguousarray(
            array if axes is None else np.transpose(array, axes)
        )
    if conv_strength is not None:
        _bake_conv_strength(state_dict, np.asarray(conv_strength, np.float32))
    return state_dict


def _bake_conv_strength(state_dict: StateDict, conv_strength: np.ndarray) -> None:
    gates = sorted(
        (int(k.split(".")[1]), k) for k in state_dict if k.endswith(".attn.gating_param")
    )
    if conv_strength.ndim == 0:
        conv_strength = np.full((len(gates),), conv_strength)
    if conv_strength.shape != (len(gates),):
        raise ValueError(
            f"conv_strength must have one value per GPSA layer, shape ({len(gates)},),"
            f" got {conv_strength.shape}"
        )
    for s, (_, key) in zip(conv_strength, gates):
        gate = s + (1.0 - s) / (1.0 + np.exp(-state_dict[key].astype(np.float64)))
        with np.errstate(divide="ignore"):
            state_dict[key] = np.log(gate / (1.0 - gate)).astype(np.float32)


# --- Import --------------------------------------------------------------------------------


def timm_to_prs(
    state_dict: Mapping[str, np.ndarray],
    target: Mapping[str, Any],
    *,
    head_init: str | None = "zeros",
    pos_embed_resize: str | None = "bilinear",
) -> Variables:
    """prs_jax variables from a timm state dict, shaped like `target`: the target model's
    variables from `model.init` (or `abstract_variables`, its shapes only).

    head_init: when the file's classifier has another number of classes, 'zeros' (vit_jax's
      choice) or 'init' (keep the head of `target`, which must then hold arrays); None
      makes it an error. pos_embed_resize: 'bilinear' / 'bicubic' / ... (jax.image.resize) for a
      position embedding on another patch grid; None makes it an error.
    Raises StateDictMismatchError listing every key that is missing, unexpected or mis-shaped.
    """
    if head_init not in ("zeros", "init", None):
        raise ValueError(f"head_init must be 'zeros', 'init' or None, got {head_init!r}")
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    targets = {
        timm_key(path): ((collection, *path), leaf)
        for (collection, *path), leaf in _flat_variables(target).items()
    }
    expected = expected_timm_shapes(target)

    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shapes, adapt = {}, {}
    for key in expected.keys() & state_dict.keys():
        got, want = tuple(np.shape(state_dict[key])), expected[key]
        if got == want:
            continue
        if key == "pos_embed" and pos_embed_resize and _resizable(got, want):
            adapt[key] = "resize"
        elif key in HEAD_KEYS and head_init and got[1:] == want[1:]:
            adapt[key] = "head"
        else:
            wrong_shapes[key] = (got, want)
    if missing or unexpected or wrong_shapes:
        raise StateDictMismatchError(missing, unexpected, wrong_shapes, hint=describe(state_dict))

    flat = {}
    for key, (path, init_leaf) in targets.items():
        array = np.asarray(state_dict[key], np.float32)
        if adapt.get(key) == "resize":
            array = resize_pos_embed(array, expected[key][1], method=pos_embed_resize)
        elif adapt.get(key) == "head":
            if head_init == "init":
                if isinstance(init_leaf, jax.ShapeDtypeStruct):
                    raise ValueError("head_init='init' needs a target with arrays, not shapes")
                flat[path] = np.asarray(init_leaf, np.float32)
                continue
            array = np.zeros(expected[key], np.float32)
        axes = _from_timm_axes(_timm_axes(path[1:], array.ndim))
        flat[path] = np.ascontiguousarray(array if axes is None else np.transpose(array, axes))
    for key, how in sorted(adapt.items()):
        logging.info(
            "%s: %s %s -> %s.",
            key,
            f"resized ({pos_embed_resize})" if how == "resize" else f"re-initialised ({head_init})",
            list(np.shape(state_dict[key])),
            list(expected[key]),
        )
    return traverse_util.unflatten_dict(flat)


def _resizable(got: tuple[int, ...], want: tuple[int, ...]) -> bool:
    """Both [1, tokens, C] with the same C and the same class-token slot (present or not)."""
    if len(got) != 3 or len(want) != 3 or got[0] != 1 or got[2] != want[2]:
        return False
    slots = [_class_token_slots(n) for n in (got[1], want[1])]
    return None not in slots and slots[0] == slots[1]


def _class_token_slots(num_tokens: int) -> int | None:
    """0 for S*S tokens (ConViT), 1 for S*S + 1 (DeiT), None otherwise (S*S + 1 is no square)."""
    for slots in (0, 1):
        if num_tokens > slots and math.isqrt(num_tokens - slots) ** 2 == num_tokens - slots:
            return slots
    return None


def resize_pos_embed(
    pos_embed: np.ndarray, num_tokens: int, *, method: str = "bilinear"
) -> np.ndarray:
    """Position embedding f32[1, N(+1), C] -> f32[1, num_tokens, C] over the square patch grid
    (jax.image.resize, antialiased when shrinking); a class-token slot stays as it is."""
    slots = _class_token_slots(pos_embed.shape[1])
    if slots is None or _class_token_slots(num_tokens) != slots:
        raise ValueError(
            f"cannot resize a position embedding of {pos_embed.shape[1]} tokens to"
            f" {num_tokens}: both must be a square grid, with the same class slot"
        )
    old, new = math.isqrt(pos_embed.shape[1] - slots), math.isqrt(num_tokens - slots)
    width = pos_embed.shape[2]
    grid = pos_embed[0, slots:].reshape(old, old, width)
    grid = np.asarray(jax.image.resize(jnp.asarray(grid), (new, new, width), method=method))
    return np.concatenate([pos_embed[:, :slots], grid.reshape(1, new * new, width)], axis=1)


FAMILY_NAMES = {
    "convit": "a timm ConViT",
    "vit": "a timm VisionTransformer (DeiT)",
    "resnet": "a timm/torchvision ResNet",
}


def file_family(state_dict: Mapping[str, Any]) -> str | None:
    """'convit', 'vit' or 'resnet' from a state dict's keys; None if it is none of them."""
    keys = state_dict.keys()
    if any(k.endswith(".attn.gating_param") for k in keys):
        return "convit"
    if any(k.endswith(".attn.qkv.weight") for k in keys) and "patch_embed.proj.weight" in keys:
        return "vit"
    if "layer1.0.conv1.weight" in keys:
        return "resnet"
    return None


def model_family(name: str) -> str:
    """The family of a prs_jax model name: 'convit' (GPSA layers), 'vit' (DeiT) or 'resnet'."""
    if name in VIT_VARIANTS:
        return "convit" if VIT_VARIANTS[name]["num_gpsa_layers"] else "vit"
    if name in models.RESNET_VARIANTS:
        return "resnet"
    raise ValueError(f"unknown model name {name!r}; choose one of {', '.join(models.MODEL_NAMES)}")


def describe(state_dict: Mapping[str, Any]) -> str:
    """What a state dict looks like, for error messages."""
    family = file_family(state_dict)
    if family is None:
        return "the file is none of timm's ConViT, VisionTransformer or ResNet"
    return f"the file looks like {FAMILY_NAMES[family]} state dict"


def infer_model_fields(state_dict: Mapping[str, np.ndarray], name: str) -> dict[str, Any]:
    """`create_model(name, **fields)` arguments that fit the file: width, depth, patch size,
    number of GPSA layers and of heads (ConViT), ResNet stem and width, number of classes.

    The name fixes the family and what a state dict does not record: qkv biases and the
    position embedding's class-token slot (DeiT yes, ConViT no), and a DeiT's number of heads.
    A file of another family gets the name's defaults, for the strict check to report.
    """
    shape = lambda key: tuple(np.shape(state_dict[key])) if key in state_dict else None  # noqa: E731
    family = model_family(name)
    fields: dict[str, Any] = {"num_classes": 1000}
    if family != "resnet":
        fields.update(layer_norm_epsilon=TIMM_LAYER_NORM_EPSILON, patch_size=16)
    if file_family(state_dict) != family:
        return fields
    if family == "resnet":
        if (stem := shape("conv1.weight")) and len(stem) == 4:
            fields.update(width=stem[0], stem="imagenet" if stem[2] == 7 else "cifar")
        if fc := shape("fc.weight"):
            fields["num_classes"] = fc[0]
        return fields
    if (patch := shape("patch_embed.proj.weight")) and len(patch) == 4:
        fields.update(hidden_size=patch[0], patch_size=patch[2])
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    fields["depth"] = max(blocks) + 1
    if family == "convit":
        fields["num_gpsa_layers"] = sum(f"blocks.{i}.attn.qk.weight" in state_dict for i in blocks)
        if gating := shape("blocks.0.attn.gating_param"):
            fields["num_heads"] = gating[0]
    if (fc1 := shape("blocks.0.mlp.fc1.weight")) and len(fc1) == 2 and fc1[1]:
        fields["mlp_ratio"] = fc1[0] / fc1[1]
    if head := shape("head.weight"):
        fields["num_classes"] = head[0]
    return fields


def source_image_size(state_dict: Mapping[str, np.ndarray], default: int = 224) -> int:
    """The image size a ViT state dict's position embedding was made for (patch * grid)."""
    pos, patch = state_dict.get("pos_embed"), state_dict.get("patch_embed.proj.weight")
    if pos is None or patch is None or (slots := _class_token_slots(pos.shape[1])) is None:
        return default
    return math.isqrt(pos.shape[1] - slots) * patch.shape[-1]


def abstract_variables(model, image_size: int) -> Variables:
    """ShapeDtypeStructs of `model.init` at `image_size`: the shapes a file must fit."""
    return jax.eval_shape(functools.partial(init_variables, model, image_size), jax.random.key(0))


def init_variables(model, image_size: int, rng: jax.Array) -> Variables:
    """`model.init` on a zero image batch [1, S, S, 3]: fresh variables of the target."""
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return dict(model.init(rng, images, jnp.zeros((model.num_gpsa_layers,)), train=False))


def load_timm(
    path_or_state_dict: str | Mapping[str, np.ndarray],
    name: str,
    *,
    image_size: int | None = None,
    num_classes: int | None = None,
    head_init: str | None = "zeros",
    pos_embed_resize: str | None = "bilinear",
    seed: int = 0,
    **overrides: Any,
):
    """(model, variables): the prs_jax model `name` sized like the file, with its weights.

    The name picks the family (ConViT/PRS-ViT, DeiT or ResNet); `infer_model_fields` reads the
    sizes from the file, so reduced models load too.

    image_size defaults to the file's (ViTs); another one resizes the position embedding.
    num_classes defaults to the file's; another one re-initialises the head (`head_init`).
    `overrides` set model fields (dtype, drop_path_rate, ...); size fields that disagree with
    the file raise StateDictMismatchError.
    """
    state_dict = (
        read_state_dict(path_or_state_dict)
        if isinstance(path_or_state_dict, str)
        else dict(path_or_state_dict)
    )
    fields = infer_model_fields(state_dict, name)
    if num_classes is not None:
        fields["num_classes"] = num_classes
    fields.update(overrides)
    variant = VIT_VARIANTS.get(name, {})
    if (
        model_family(name) == "vit"
        and "num_heads" not in fields
        and fields.get("hidden_size", variant["hidden_size"]) != variant["hidden_size"]
    ):
        raise ValueError(
            f"a DeiT state dict does not record its number of heads: {name} has"
            f" {variant['num_heads']} at width {variant['hidden_size']}, the file is"
            f" {fields['hidden_size']} wide; pass num_heads"
        )
    model = models.create_model(name, **fields)
    image_size = image_size or source_image_size(state_dict)
    if head_init == "init":
        target = jax.jit(functools.partial(init_variables, model, image_size))(jax.random.key(seed))
    else:
        target = abstract_variables(model, image_size)
    variables = timm_to_prs(
        state_dict, target, head_init=head_init, pos_embed_resize=pos_embed_resize
    )
    return model, variables


def load_into(
    target: Mapping[str, Any],
    path: str,
    *,
    head_init: str | None = "zeros",
    pos_embed_resize: str | None = "bilinear",
) -> Variables:
    """The variables `target` of an initialised model, replaced by the weights in `path`: a timm
    state dict or a prs_jax variables file (the target's shapes rule, not the file's fields).
    For starting a training run from converted weights (config.init_from)."""
    if _metadata(path).get("format") == PRS_FORMAT:
        state_dict = prs_to_timm(load_variables(path)[0])
    else:
        state_dict = read_state_dict(path)
    return timm_to_prs(state_dict, target, head_init=head_init, pos_embed_resize=pos_embed_resize)


def model_fields(model, name: str) -> dict[str, Any]:
    """{'name': name, **fields} such that `create_model_from_fields` rebuilds `model` (in
    float32): its dataclass fields, less flax's own and those the named ResNets fix."""
    skip = {"parent", "name", "dtype", "stage_sizes", "block"}
    fields = {
        f.name: getattr(model, f.name)
        for f in dataclasses.fields(model)
        if f.name not in skip and not f.name.startswith("_")
    }
    return {"name": name, **fields}
