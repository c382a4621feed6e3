r"""The embedded default: a small PRS-ViT on scikit-learn's digits. Runs offline, on a CPU.

  python -m prs_jax.main --config configs/digits.py --workdir /tmp/prs_digits

scikit-learn ships the 1,797 8x8 digit images, so nothing is downloaded. They go through the
same pipeline, model, schedule and train step as CIFAR-100: images upscaled to 16 px, patch 2
(an 8 x 8 token grid), a 6-block ViT whose 4 GPSA layers switch to self-attention with PRS
(the deepest at epoch 5, the shallowest at epoch 15, of 30).

Hardware assumed: a 2-core CPU. Expected: at least 90% test accuracy in a few minutes (measured
figure in README's table of runs).
"""

import ml_collections

from prs_jax.training import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = config_lib.parse_arg(arg, variant="prs", epochs=30.0)
    config = config_lib.base_config()
    config.num_epochs = arg.epochs

    config.data.name = "digits"
    config.data.image_size = 16
    config.data.crop_padding = 2
    config.data.random_flip = False  # a flipped digit is another symbol
    config.data.randaugment_num_ops = 0
    config.data.random_erasing_prob = 0.0

    config.model.name = "convit_tiny"
    config.model.update(
        patch_size=2, hidden_size=64, num_heads=4, depth=6, num_gpsa_layers=4, drop_path_rate=0.0
    )
    if arg.variant in config_lib.SCHEDULE_VARIANTS:
        config_lib.set_schedule(config, arg.variant)
    elif arg.variant == "deit":
        config.model.update(num_gpsa_layers=0, qkv_bias=True, class_token_position_embedding=True)
    else:
        raise ValueError(
            f"unknown variant {arg.variant!r}; choose deit or one of {sorted(config_lib.SCHEDULE_VARIANTS)}"
        )

    config.batch_size = 64
    config.eval_batch_size = 128
    # An absolute rate tuned for this demo, not DeiT's per-512 rule (1e-3 would be 8e-3 / 512).
    config.optimizer.learning_rate = 1e-3
    config.optimizer.learning_rate_per_512 = 0.0
    config.optimizer.warmup_epochs = min(2.0, arg.epochs / 4)
    config.optimizer.weight_decay = 0.05
    config.augment.mixup_alpha = 0.0
    config.augment.cutmix_alpha = 0.0
    config.augment.label_smoothing = 0.1
    config.log_every_steps = 20
    config.eval_every_epochs = 5.0
    config.checkpoint_every_steps = 500
    return config
