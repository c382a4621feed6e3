"""Parity with the PyTorch reference (timm's ConViT, VisionTransformer and ResNet), for the
command prs_jax.parity; needs torch and timm (`pip install -e '.[parity]'`, then timm with
--no-deps, see README).

  reference.py  timm's model of a config, with prs_jax's initial weights, the PRS conv strength
                on its GPSA layers, and the recipe's optimizer, learning rate and mixing written
                with PyTorch and timm (independently of prs_jax.method)
  harness.py    both train steps on the same batches, step by step: losses, gradient norms and
                the largest relative parameter (and BatchNorm statistic) difference
  init_stats.py prs_jax's initial distributions against timm's, tensor by tensor
  trainer.py    timm's model trained in PyTorch on a config's data, recipe and budget
"""
