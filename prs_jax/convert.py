r"""Convert timm ConViT/DeiT/ResNet weights to prs_jax and back (prs_jax.models.timm_weights).

  python -m prs_jax.convert to-prs convit_tiny.safetensors convit_tiny_prs.safetensors \
      --model convit_tiny [--image-size 32] [--num-classes 100]
  python -m prs_jax.convert to-timm ~/runs/cifar100_prs convit_tiny_timm.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from prs_jax import cli, models
from prs_jax.errors import UserError
from prs_jax.models.timm_weights import (
    Variables,
    load_timm,
    load_variables,
    model_fields,
    prs_to_timm,
    save_variables,
    write_state_dict,
)
from prs_jax.training import checkpointing, config_lib


def restore_variables(workdir: str, step: int | None = None) -> tuple[Variables, dict[str, Any]]:
    """(variables, the run's config.model) of a training run's checkpoint (the latest by
    default). config.model holds the name and overrides, not the dataset's num_classes."""
    import orbax.checkpoint as ocp  # only the export of a training run needs orbax

    config = checkpointing.restore_config(workdir, step)
    with ocp.CheckpointManager(
        checkpointing.checkpoint_dir(workdir),
        item_names=("state", "data", "config"),
        options=ocp.CheckpointManagerOptions(read_only=True),
    ) as manager:
        step = manager.latest_step() if step is None else step
        state = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
        ).state
    variables = {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}
    variables = jax.tree.map(np.asarray, variables)
    # The set fields only: an unset one (None) means the named model's default.
    fields = {"name": config.model.name, **config_lib.model_overrides(config.model)}
    fields.pop("dtype", None)
    return variables, fields


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: Sequence[str] | None = None) -> None:
    """The command; a user's mistake (a missing file, weights that do not fit the model) exits
    2 with one line."""
    parser = argparse.ArgumentParser(
        prog="python -m prs_jax.convert",
        description="Convert timm ConViT/DeiT/ResNet weights to prs_jax and back.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    to_prs = commands.add_parser(
        "to-prs", help="timm state dict (.safetensors, or .pth/.bin with torch) -> prs_jax file"
    )
    to_prs.add_argument("source")
    to_prs.add_argument("destination", help="a .safetensors file in prs_jax layout")
    to_prs.add_argument("--model", required=True, choices=models.MODEL_NAMES)
    to_prs.add_argument("--image-size", type=int, help="ViTs: resize the position embedding")
    to_prs.add_argument("--num-classes", type=int, help="re-initialise the head for K classes")
    to_prs.add_argument("--head-init", default="zeros", choices=("zeros", "init"))
    to_prs.add_argument("--pos-embed-resize", default="bilinear")
    to_prs.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a model field (e.g. --set qkv_bias=true)",
    )
    to_timm = commands.add_parser(
        "to-timm", help="prs_jax file or training workdir -> timm .safetensors state dict"
    )
    to_timm.add_argument("source", help="a file written by to-prs, or a training workdir")
    to_timm.add_argument("destination", help="a .safetensors file in timm layout")
    to_timm.add_argument("--step", type=int, help="workdir: this checkpoint, not the latest")
    to_timm.add_argument(
        "--conv-strength",
        type=float,
        nargs="+",
        help="bake the PRS conv strength (one value, or one per GPSA layer)",
    )
    args = parser.parse_args(argv)
    with cli.exit_on_user_error("prs_jax.convert"):
        _run(args)


def _run(args: argparse.Namespace) -> None:
    if not os.path.exists(args.source):
        raise UserError(
            f"no file or folder {args.source}: give a"
            + (" timm state dict" if args.command == "to-prs" else " training workdir or file")
        )
    if args.command == "to-prs":
        overrides = dict(item.split("=", 1) for item in args.set)
        model, variables = load_timm(
            args.source,
            args.model,
            image_size=args.image_size,
            num_classes=args.num_classes,
            head_init=args.head_init,
            pos_embed_resize=args.pos_embed_resize,
            **{k: _parse_value(v) for k, v in overrides.items()},
        )
        fields = model_fields(model, args.model)
        save_variables(args.destination, variables, fields)
        print(
            f"{args.source} -> {args.destination}:"
            f" {args.model} {json.dumps(fields, sort_keys=True)}"
        )
    else:
        if os.path.isdir(args.source):
            variables, fields = restore_variables(args.source, args.step)
        else:
            variables, fields = load_variables(args.source)
        conv_strength = args.conv_strength
        if conv_strength is not None and len(conv_strength) == 1:
            conv_strength = conv_strength[0]
        state_dict = prs_to_timm(variables, conv_strength=conv_strength)
        write_state_dict(state_dict, args.destination)
        print(
            f"{args.source} -> {args.destination}: {len(state_dict)} tensors in timm layout"
            f" ({fields.get('name', 'model')})"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
