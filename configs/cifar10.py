r"""CIFAR-10 image folders: a small PRS-ViT and its baselines on nested train subsets, sized for a
2-core CPU, with the DeiT recipe. The data-scale study of README's "Results on real data".

Data: ROOT/train/<class>/*.jpg, the 50,000 CIFAR-10 training images (no test split). A fixed,
class-balanced 10% of them (500 per class; `folder_validation_fraction`) is the validation
split: no run trains on it, and every reported number is on it. `fraction=r` trains on the
nested, class-balanced subset r of the other 45,000 (subset_seed 0: every model and seed sees
the same images at a ratio).

  python -m prs_jax.main --config configs/cifar10.py:prs,fraction=0.1 --workdir ~/runs/c10_prs_10
  python -m prs_jax.main --config configs/cifar10.py:deit,fraction=0.1,folder_root=/data/cifar10 \
      --workdir ~/runs/c10_deit_10 --config.seed=1

Budget: every run takes `steps` optimizer steps of batch 128 (default 600, 76,800 images),
whatever the ratio, so every model and ratio gets the same compute and the same learning-rate
and conv-strength schedules in fractions of the run; the ratio only changes how many distinct
images those steps see (35 epochs at 5%, 1.7 at 100%). The schedules are in epochs of that run.
The default 600 steps at the DeiT rule's rate is the short-budget study's, where every model is
still climbing. The converged study (configs/sweeps/cifar10_study.py) takes `steps=6000,evals=24`
and `lr=K` per model family, both chosen from learning curves at 10% on the validation split
(configs/sweeps/cifar10_curves.py): a family's rate is the one with the best final top-1 among
1x, 4x and 8x, ties within 1 point going to the lower; 6,000 steps is where the chosen curve's
last quarter adds at most about 1 point. GPSA family: `lr=4` (ConViT 53.06 / 60.50 / 60.92% at
1x / 4x / 8x; the 4x curve's last quarter adds 0.88 points).

Variants by argument (`configs/cifar10.py:VARIANT[,ARGS]`):
  prs (default)  the ConViT below; GPSA layer l of 4 switches from convolution to
                 self-attention at 1/2 - l/9 of the run (the shallowest at 1/2, the deepest at 1/6).
  reversed       the same switch epochs, shallow layers first.
  uniform        all 4 GPSA layers switch at 1/3 of the run (`switch=E` picks another epoch).
  convit         ConViT: self-attention from the start, learned gates.
  conv           never switches: a convolutional ViT.
  deit           the DeiT twin: the same width, depth and heads, no GPSA layer.
  resnet         ResNet-18 (CIFAR stem) at width 24, the width whose train step comes closest
                 to the ViTs' (prs_jax.bench: 129 img/s vs 186 for prs; width 16 286, 20 121
                 (odd widths run badly in oneDNN), 32 83).
  runlocal       a 2-minute check: 100 steps, evaluation on it at the end.
Other arguments: `fraction=0.1`, `steps=600`, `switch=E` (uniform's switch epoch),
`first=F,last=F` (the shallowest and deepest GPSA layers' switch points as fractions of the
run, for any schedule variant), `ramp=F` (each layer's ramp from 1 to 0 as a fraction of the
run; 0, the default, is a hard switch), `lr=K` (the peak learning rate as K times the DeiT
rule's 5e-4 x batch / 512; default 1), `evals=N` (evaluations on the validation split per run,
evenly spaced; default 4), `folder_root=DIR` (default ~/.cache/prs_jax/cifar10).

Models: ConViT width 128, depth 6, 4 heads (head dim 32), the first 4 blocks GPSA, patch 4 on
32 px (an 8 x 8 grid): 1.2M parameters; DeiT twin 1.2M; ResNet-18 at width 24 1.6M.

Hardware: a 2-core AMD EPYC CPU (JAX 0.10.2, float32, one device per core): 7-9.5 minutes per
ViT run, 8.5-11.5 for the ResNet; 35-48 minutes per ViT run at steps=6000. Expected top-1 on
the validation split at fraction=0.1, seed 0, steps=6000: convit 60.50% with lr=4. Expected top-1 on the validation split at
fraction=0.1 at 600 steps (mean of 2 seeds): resnet 38.0% (before the BatchNorm variance fix),
prs 31.9%, uniform 31.7%, convit 31.4%, deit 29.6%, each within about 0.4 points between seeds
(1.5 for the ResNet). With steps=1800 (22-28 minutes, seed 0):
uniform 40.5%, prs 40.4%, convit 40.2%, deit 39.0%. Every run: README, "Results on real data".
"""

import ml_collections

from prs_jax.training import config_lib

# CIFAR-10's train split: 10 classes of 5,000 images, of which VALIDATION_FRACTION are held out.
CLASSES, IMAGES_PER_CLASS, VALIDATION_FRACTION = 10, 5000, 0.1
VIT_SIZE = dict(hidden_size=128, num_heads=4, depth=6)
NUM_GPSA_LAYERS = 4
RESNET_WIDTH = 24


def train_examples(fraction: float) -> int:
    """Images of the `fraction` subset: round(r n_c) per class (prs_jax.data.subsets)."""
    per_class = IMAGES_PER_CLASS - round(VALIDATION_FRACTION * IMAGES_PER_CLASS)
    return CLASSES * round(fraction * per_class)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = config_lib.parse_arg(
        arg,
        variant="prs",
        runlocal=False,
        fraction=1.0,
        steps=600,
        switch=-1.0,
        ramp=0.0,
        first=-1.0,
        last=-1.0,
        lr=1.0,
        evals=4,
        folder_root="~/.cache/prs_jax/cifar10",
    )
    if not 0.0 < arg.fraction <= 1.0:
        raise ValueError(f"fraction={arg.fraction}; must be in (0, 1]")
    if arg.steps <= 0:
        raise ValueError(f"steps={arg.steps}; must be positive")
    if arg.lr <= 0:
        raise ValueError(f"lr={arg.lr}; must be a positive multiple of the DeiT rule's rate")
    if arg.evals < 1:
        raise ValueError(f"evals={arg.evals}; must be at least 1 (evaluations per run)")
    config = config_lib.base_config()
    steps = 100 if arg.runlocal else arg.steps
    batch_size = config.batch_size  # 128
    steps_per_epoch = train_examples(arg.fraction) // batch_size
    config.num_epochs = steps / steps_per_epoch

    config.data.name = "image_folder"
    config.data.folder_root = arg.folder_root
    config.data.folder_validation_fraction = VALIDATION_FRACTION
    config.data.eval_split = "validation"
    config.data.train_fraction = arg.fraction
    config.data.image_size = 32
    # DeiT's RandAugment is timm's "rand-m9-mstd0.5-inc1"; the rest of the data recipe (pad-crop
    # by 4, flip, random erasing 0.25) is the CIFAR-100 config's.
    config.data.randaugment_magnitude_std = 0.5
    config.data.randaugment_increasing = True

    config.model.patch_size = 4
    config_lib.select_variant(
        config,
        arg.variant,
        vit="convit_tiny",
        switch=arg.switch,
        resnets={"resnet": {"stem": "cifar", "dtype": "float32"}},
    )
    if arg.variant == "resnet":
        config.model.name = "resnet18"
        config.model.width = RESNET_WIDTH
    else:
        num_gpsa = 0 if arg.variant == "deit" else NUM_GPSA_LAYERS
        config.model.update(**VIT_SIZE, num_gpsa_layers=num_gpsa)
    if (arg.first >= 0) != (arg.last >= 0):
        raise ValueError("give both first= and last= (switch fractions of the run), or neither")
    if arg.first >= 0:
        if arg.variant not in config_lib.SCHEDULE_VARIANTS:
            raise ValueError(f"first=/last= set a GPSA schedule; variant {arg.variant!r} has none")
        config.schedule.first_layer_switch_epoch = arg.first * config.num_epochs
        config.schedule.last_layer_switch_epoch = arg.last * config.num_epochs
    config.schedule.ramp_epochs = arg.ramp * config.num_epochs

    # DeiT: 5 warmup epochs of 300; the same share of this run.
    config.optimizer.warmup_epochs = config.num_epochs * 5 / 300
    # `lr=k` scales the DeiT rule's peak rate (5e-4 x batch / 512) by k: the learning-curve
    # sweep (configs/sweeps/cifar10_curves.py) compares k = 1, 4, 8 per model family.
    config.optimizer.learning_rate_per_512 *= arg.lr
    config.log_every_steps = 25
    config.eval_every_epochs = config.num_epochs / arg.evals
    config.checkpoint_every_steps = 250
    config.keep_checkpoints = 1
    return config
