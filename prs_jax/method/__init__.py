"""PRS itself, apart from the networks (prs_jax.models): pure functions of the step and config.

schedule.py   each GPSA layer's conv strength over the run (PRS, reversed, uniform, ConViT,
              conv) and the learning-rate schedule
optimizer.py  AdamW with DeiT's recipe, per-layer learning rates, and what happens to a
              layer's content path while it is still a convolution
mixing.py     mixup/cutmix and label smoothing on device
"""
