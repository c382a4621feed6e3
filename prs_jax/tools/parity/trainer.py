"""timm's model trained in PyTorch on a config's images, recipe and budget: the reference
trainer of README's "Parity with the PyTorch reference" (`python -m prs_jax.parity
--train_reference WORKDIR`).

Same as prs_jax's run of the config: the images (the config's train subset and its validation
split, read by prs_jax.data, so the very same files), the model's sizes, the batch size, the
number of steps and the per-step learning rate (warmup, then cosine, timm's CosineLRScheduler
counted in steps), AdamW with timm's parameter groups, mixup/cutmix and label smoothing,
stochastic depth, the evaluations. timm's and PyTorch's own code does the rest, as DeiT's
main.py builds it for 32 px images: random crop with 4 px of zero padding and horizontal flip
(written here: torchvision's are not installed), timm's RandAugment (rand-mM-nN-mstdS[-inc1],
with timm's hparams for the image size and mean), ToTensor and Normalize, timm's RandomErasing
(mode 'pixel', one box), timm's Mixup and SoftTargetCrossEntropy; timm's own initialisation
(torch.manual_seed(config.seed)). A PRS schedule sets the conv strength of the GPSA layers and
rests their content path as in reference.py.

Writes WORKDIR/metrics.jsonl (a line per log and per evaluation) and WORKDIR/reference.json
(the last evaluation's top-1 and the run's description).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import random
import time
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from prs_jax.data import sources, train_examples
from prs_jax.method import schedule
from prs_jax.tools.parity import reference as torch_reference
from prs_jax.tools.timm_bench import import_timm, timm_mixup
from prs_jax.training.state import create_model


class _Images:
    """A prs_jax source as a torch dataset: (image tensor, label) through `transform`."""

    def __init__(self, source, transform, limit: int | None = None):
        self.source, self.transform = source, transform
        self.length = len(source) if limit is None else min(limit, len(source))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        record = self.source[index]
        return self.transform(np.asarray(record["image"], np.uint8)), int(record["label"])


def _posterize_zero_bits_as_black() -> None:
    """timm's increasing Posterize keeps 4 - 4m bits, so 0 at the top of the magnitude noise;
    Pillow < 13, which timm was written against, gave a black image for 0 bits, and Pillow 13
    raises instead. Give timm the old behaviour (prs_jax.data.randaugment does the same), so that
    a reference run neither fails nor differs from the recipe it was published with."""
    from PIL import Image  # pylint: disable=import-outside-toplevel
    from timm.data import auto_augment  # pylint: disable=import-outside-toplevel

    original = auto_augment.posterize
    if getattr(original, "zero_bits_black", False):
        return

    def posterize(img, bits_to_keep, **kwargs):
        if bits_to_keep <= 0:
            return Image.new(img.mode, img.size)
        return original(img, bits_to_keep, **kwargs)

    posterize.zero_bits_black = True
    auto_augment.posterize = posterize
    for name, op in list(auto_augment.NAME_TO_OP.items()):
        if op is original:
            auto_augment.NAME_TO_OP[name] = posterize


def _transforms(config: ml_collections.ConfigDict):
    """(train, eval) transforms: uint8 [S, S, 3] -> normalised float tensor [3, S, S]."""
    import torch  # pylint: disable=import-outside-toplevel
    from PIL import Image  # pylint: disable=import-outside-toplevel
    from timm.data.auto_augment import rand_augment_transform  # pylint: disable=import-outside-toplevel
    from timm.data.random_erasing import RandomErasing  # pylint: disable=import-outside-toplevel

    data = config.data
    mean, std = sources.normalization(data)
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)
    size, padding = data.image_size, data.crop_padding
    policy = f"rand-m{data.randaugment_magnitude:g}-n{data.randaugment_num_ops}"
    if data.randaugment_magnitude_std:
        policy += f"-mstd{data.randaugment_magnitude_std:g}"
    if data.randaugment_increasing:
        policy += "-inc1"
    # timm's transforms_factory: translate by 45% of the size, fill with the mean colour.
    hparams = dict(translate_const=int(size * 0.45), img_mean=tuple(round(255 * x) for x in mean))
    _posterize_zero_bits_as_black()
    augment = rand_augment_transform(policy, hparams) if data.randaugment_num_ops else None
    erase = RandomErasing(data.random_erasing_prob, mode="pixel", max_count=1, device="cpu")

    def to_tensor(image: np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        return (tensor - mean_t) / std_t

    def train(image: np.ndarray):
        # torchvision's RandomCrop(size, padding) and RandomHorizontalFlip(), with Python's RNG
        # as timm's RandAugment uses (seeded per worker by torch's DataLoader).
        padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
        top, left = random.randint(0, 2 * padding), random.randint(0, 2 * padding)
        image = padded[top : top + size, left : left + size]
        if data.random_flip and random.random() < 0.5:
            image = image[:, ::-1]
        if augment is not None:
            image = np.asarray(augment(Image.fromarray(np.ascontiguousarray(image))))
        tensor = to_tensor(image)
        return erase(tensor) if data.random_erasing_prob > 0 else tensor

    return train, to_tensor


def _evaluate(model, loader) -> tuple[float, float]:
    import torch  # pylint: disable=import-outside-toplevel

    model.eval()
    correct = loss = count = 0.0
    with torch.no_grad():
        for images, labels in loader:
            logits = model(images)
            loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += float((logits.argmax(-1) == labels).sum())
            count += len(labels)
    model.train()
    return correct / max(count, 1), loss / max(count, 1)


def train(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    max_steps: int | None = None,
    max_images: int | None = None,
    eval_images: int | None = None,
) -> dict[str, Any]:
    """Train timm's model of `config` in PyTorch; `max_*` cut a run short (tests)."""
    import torch  # pylint: disable=import-outside-toplevel

    import_timm()  # first: timm's own imports need the torchvision placeholder where it is missing
    from timm.loss import SoftTargetCrossEntropy  # pylint: disable=import-outside-toplevel
    from timm.optim import create_optimizer_v2  # pylint: disable=import-outside-toplevel
    from timm.scheduler import CosineLRScheduler  # pylint: disable=import-outside-toplevel

    workdir_path = pathlib.Path(workdir).expanduser()
    workdir_path.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(config.seed)
    # timm's Mixup draws from NumPy's global generator and its RandAugment from Python's.
    np.random.seed(config.seed)  # noqa: NPY002
    random.seed(config.seed)

    train_source = train_examples.train_source(config.data)
    eval_source = sources.open_source(config.data, config.data.eval_split)
    num_classes = sources.dataset_spec(config.data).num_classes
    steps = schedule.training_steps(
        len(train_source), config.batch_size, config.num_epochs, config.optimizer.warmup_epochs
    )
    total_steps = steps.total_steps if max_steps is None else min(max_steps, steps.total_steps)
    train_transform, eval_transform = _transforms(config)
    workers = 1 if max_steps is None else 0
    loader = torch.utils.data.DataLoader(
        _Images(train_source, train_transform, max_images),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(config.seed),
    )
    eval_loader = torch.utils.data.DataLoader(
        _Images(eval_source, eval_transform, eval_images), batch_size=config.eval_batch_size
    )

    ours = create_model(config, num_classes)
    model = torch_reference.build_model(ours, config, num_classes).train()
    num_layers = torch_reference.gpsa_layers(model)
    conv_strength_fn = schedule.make_conv_strength_fn(
        num_layers, steps.steps_per_epoch, config.schedule
    )
    strengths = torch_reference.ConvStrength(model, num_layers) if num_layers else None
    content = torch_reference.content_path(model, num_layers)
    opt = config.optimizer
    peak = opt.learning_rate or opt.learning_rate_per_512 * config.batch_size / 512
    optimizer = create_optimizer_v2(
        model, "adamw", lr=peak, weight_decay=opt.weight_decay, betas=(opt.b1, opt.b2), eps=opt.eps
    )
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=max(steps.total_steps, 1),
        lr_min=opt.min_learning_rate,
        warmup_t=steps.warmup_steps,
        warmup_lr_init=opt.warmup_learning_rate,
        t_in_epochs=False,
    )
    mixup = timm_mixup(config.augment, num_classes)
    criterion = SoftTargetCrossEntropy()
    eval_every = max(1, round(config.eval_every_epochs * steps.steps_per_epoch))
    log = (workdir_path / "metrics.jsonl").open("a")
    description = (
        f"timm {type(model).__name__} ({sum(p.numel() for p in model.parameters())} parameters),"
        f" torch {torch.__version__}, {torch.get_num_threads()} threads; {len(train_source)}"
        f" train images, {len(eval_source)} eval; {total_steps} steps of {config.batch_size}"
    )
    logging.info("%s", description)
    print(description, flush=True)

    step, start, losses, result = 0, time.time(), [], {}
    while step < total_steps:
        for images, labels in loader:
            if step >= total_steps:
                break
            scheduler.step_update(step)
            resting = []
            if strengths is not None:
                s = np.asarray(conv_strength_fn(step), np.float32)
                strengths.set(s)
                if opt.pause_content_path_while_conv:
                    resting = [p for value, ps in zip(s, content) if value >= 1.0 for p in ps]
            images, targets = mixup(images, labels)
            loss = criterion(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for parameter in resting:
                parameter.grad = None
            if opt.grad_clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip_norm)
            optimizer.step()
            step += 1
            losses.append(float(loss.detach()))
            if step % config.log_every_steps == 0 or step == total_steps:
                record = {
                    "step": step,
                    "train/loss": float(np.mean(losses)),
                    "learning_rate": optimizer.param_groups[0]["lr"],
                    "seconds": time.time() - start,
                }
                log.write(json.dumps(record) + "\n")
                log.flush()
                print(json.dumps(record), flush=True)
                result["train_loss"], losses = record["train/loss"], []
            if step % eval_every == 0 or step == total_steps:
                accuracy, eval_loss = _evaluate(model, eval_loader)
                record = {"step": step, "eval/accuracy": accuracy, "eval/loss": eval_loss}
                log.write(json.dumps(record) + "\n")
                log.flush()
                print(json.dumps(record), flush=True)
                result.update(accuracy=accuracy, eval_loss=eval_loss)
    log.close()
    result.update(steps=step, description=description, seconds=time.time() - start)
    if not math.isfinite(result.get("train_loss", float("nan"))):
        raise FloatingPointError(f"non-finite training loss: {result}")
    (workdir_path / "reference.json").write_text(json.dumps(result, indent=1))
    return result
