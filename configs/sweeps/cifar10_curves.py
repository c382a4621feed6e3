r"""Learning curves at 10% of CIFAR-10 (configs/cifar10.py): the evidence that picks the study's
learning rate per model family and its run length.

  python -m prs_jax.sweep configs/sweeps/cifar10_curves.py --root ~/runs/c10_study --dry_run
  python -m prs_jax.sweep configs/sweeps/cifar10_curves.py --root ~/runs/c10_study
  python -m prs_jax.report --workdirs ~/runs/c10_study/{convit,deit,resnet}_lr?x_data010_seed0 \
      --out results/cifar10/curves/report

The root is the converged study's (configs/sweeps/cifar10_study.py): the curve of a family at
its chosen rate is also the study's seed-0 run of that family, found finished there.

Each run trains one model family's representative on the 10% subset (4,500 images, seed 0) for
`steps` optimizer steps of batch 128 (default 6,000: 171 epochs, 768,000 images) with the full
DeiT recipe and the cosine schedule over the whole run, and evaluates on the validation split
`evals` times (default 24: every 250 steps), so its metrics.jsonl is a learning curve. Peak
rates: k x the DeiT rule's 5e-4 x 128 / 512 = 1.25e-4, for k = 1, 4, 8.

The rule, fixed after the ConViT's 1x and 4x curves and before any other curve was read: per family, the rate with the highest final
validation top-1; rates within 1 point of it (about the spread between seeds) count as tied, and
the lowest of the tied rates is taken. The run length is kept if the chosen curve's last quarter
adds at most about 1 point.

Families: the ConViT (its rate serves every GPSA schedule: PRS, uniform, ConViT, never tuned
for PRS alone), the DeiT twin and ResNet-18. Run order: ConViT first (four of the study's five
models use its rate), then DeiT, then the ResNet; within a family the DeiT rule first.
"""

from prs_jax.sweep import Run
from prs_jax.training import config_lib

FAMILIES = ("convit", "deit", "resnet")  # configs/cifar10.py variants
RATE_MULTIPLES = (1, 4, 8)


def get_sweep(arg=None):
    arg = config_lib.parse_arg(arg, steps=6000, evals=24, runlocal=False)
    options = f",steps={arg.steps},evals={arg.evals}" + (",runlocal" if arg.runlocal else "")
    return [
        Run(
            name=f"{family}_lr{k}x_data010_seed0",
            config=f"configs/cifar10.py:{family},fraction=0.1,lr={k}{options}",
            overrides={"seed": 0},
        )
        for family in FAMILIES
        for k in RATE_MULTIPLES
    ]
