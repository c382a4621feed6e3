r"""ImageNet-1k (TFDS imagenet2012) at 224 px: PRS-ViT (ConViT-Ti, patch 16) and its baselines,
the DeiT recipe, 300 epochs; `train_fraction` trains on a class-balanced subset.

Prepare the data once (array_record, about 150 GB; hours), from the two official tars:

  tfds build imagenet2012 --data_dir ~/tensorflow_datasets --file_format array_record \
      --manual_dir ~/imagenet_tars   # holds ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar

(or pass --config.data.manual_dir=$HOME/imagenet_tars to the first run). Then:

  python -m prs_jax.main --config configs/imagenet.py:prs,train_fraction=0.1 \
      --workdir ~/runs/imagenet_prs_10 --config.data.data_dir=$HOME/tensorflow_datasets

Variants by argument (`--config configs/imagenet.py:VARIANT[,ARGS]`), as for CIFAR-100:
  prs (default)  ConViT-Ti; layer l switches from convolution to self-attention at epoch
                 150 - 100 l / 9 (the shallowest at 150, the deepest GPSA layer at 50).
  reversed       the same switch epochs, shallow layers first.
  uniform        every GPSA layer switches at epoch 100 (`switch=E` picks another epoch).
  convit         ConViT: self-attention from the start, learned gates.
  conv           never switches: a convolutional ViT.
  deit           DeiT-Ti (no GPSA layer); `model=deit_small` for DeiT-S.
  resnet18, resnet50  ResNets with the ImageNet stem, on the same recipe.
  runlocal       a smoke test: 64 px, a 4-block ViT, 1% of the data, 1 epoch.
Other arguments: `train_fraction=0.1` (the 10% subset; evaluation is on all 50,000 validation
images), `model=convit_small`, `epochs=100`, `switch=60`.

Recipe (DeiT, Touvron et al. 2021): RandomResizedCrop 224 + flip + RandAugment
rand-m9-mstd0.5-inc1 + random erasing 0.25, bicubic, ImageNet mean/std; repeated augmentation
x3; eval resize 256, center crop 224; mixup 0.8,
cutmix 1.0, label smoothing 0.1; AdamW lr 5e-4 x batch / 512, weight decay 0.05, cosine to
1e-5 after 5 warmup epochs; drop path 0.1; batch 1024.

Hardware assumed: a TPU v3-32 / v4-32 or 8 x A100/H100 (batch 1024), bfloat16. The host
pipeline (JPEG decode, RandAugment) needs many cores: `num_workers` grain processes per host.
Expected top-1 at 100%: DeiT-Ti 72.2%, ConViT-Ti 73.1% (their papers); our runs: README's table.
"""

import ml_collections

from prs_jax.training import config_lib

RESNETS = ("resnet18", "resnet50")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = config_lib.parse_arg(
        arg,
        variant="prs",
        runlocal=False,
        model="convit_tiny",
        epochs=300.0,
        switch=-1.0,
        train_fraction=1.0,
    )
    config = config_lib.base_config()
    config.num_epochs = arg.epochs

    config.data.name = "imagenet2012"
    config.data.image_size = 224
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    config.data.train_fraction = arg.train_fraction
    config.data.train_crop = "random_resized_crop"
    config.data.crop_min_scale = 0.08
    config.data.eval_crop = "resize_center_crop"
    config.data.eval_crop_pct = 0.875
    config.data.random_flip = True
    config.data.randaugment_num_ops = 2
    config.data.randaugment_magnitude = 9.0
    config.data.randaugment_magnitude_std = 0.5
    config.data.randaugment_increasing = True
    config.data.random_erasing_prob = 0.25
    config.data.repeated_augmentation = 3  # DeiT's and ConViT's RASampler, on in their main.py
    config.data.num_workers = 16

    config.model.patch_size = 16
    config.model.dtype = "bfloat16"
    config_lib.select_variant(
        config,
        arg.variant,
        vit=arg.model,
        switch=arg.switch,
        resnets={name: {"stem": "imagenet", "dtype": "bfloat16"} for name in RESNETS},
    )

    config.batch_size = 1024
    config.eval_batch_size = 1024  # any power-of-two device count; the last batch is padded
    config.optimizer.learning_rate_per_512 = 5e-4  # x batch_size / 512, resolved at the start
    config.optimizer.min_learning_rate = 1e-5
    config.optimizer.warmup_epochs = 5.0
    config.optimizer.weight_decay = 0.05
    config.augment.label_smoothing = 0.1
    config.augment.mixup_alpha = 0.8
    config.augment.cutmix_alpha = 1.0
    config.log_every_steps = 100
    config.eval_every_epochs = 5.0
    config.checkpoint_every_steps = 2000

    if arg.runlocal:
        config.data.image_size = 64
        config.data.num_workers = 0
        config.data.train_fraction = min(arg.train_fraction, 0.01)
        if config.model.name not in RESNETS:
            is_gpsa = arg.variant in config_lib.SCHEDULE_VARIANTS
            config.model.update(
                patch_size=8,
                hidden_size=64,
                num_heads=4,
                depth=4,
                num_gpsa_layers=2 if is_gpsa else 0,
            )
        config.model.dtype = "float32"
        config.num_epochs = 1.0
        config.optimizer.warmup_epochs = 0.1
        config.batch_size = 64
        config.eval_batch_size = 256
        config.log_every_steps = 10
        config.eval_every_epochs = 1.0
        config.checkpoint_every_steps = 200
        if arg.variant in config_lib.SCHEDULE_VARIANTS:
            config_lib.set_schedule(config, arg.variant, min(arg.switch, config.num_epochs))
    return config
