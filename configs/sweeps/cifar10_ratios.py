r"""The data-scale study on CIFAR-10 folders: ResNet, DeiT, ConViT, uniform switch and PRS on 5,
10, 25, 50 and 100% of the train images (configs/cifar10.py), on a 2-core CPU.

  python -m prs_jax.sweep configs/sweeps/cifar10_ratios.py --root ~/runs/c10 --dry_run
  python -m prs_jax.sweep configs/sweeps/cifar10_ratios.py --root ~/runs/c10
  python -m prs_jax.report --workdirs ~/runs/c10 --out results/cifar10/report

35 runs named MODEL_dataPCT_seedS (e.g. prs_data010_seed0): every model at every ratio with seed
0, and seed 1 at 5% and 10%, where the spread between seeds matters most. The list is in the
order that answers the study's questions soonest (10%, then 5%, then the second seeds, then the
larger ratios), so a sweep cut short still has the small-data comparison; a rerun resumes.

Budget rule: the same number of optimizer steps (configs/cifar10.py `steps`, 600 of batch 128)
for every model and ratio. Equal epochs would give the 5% runs 20 times fewer updates than the
100% runs, mixing "less data" with "less training"; equal steps keep the compute and both
schedules fixed and change only how many distinct images the steps draw from. On this CPU it
is also what fits: every run costs the same (README, "Results on real data").
"""

from prs_jax.sweep import Run
from prs_jax.training import config_lib

MODELS = ("resnet", "deit", "convit", "uniform", "prs")  # configs/cifar10.py variants
# (ratio, seed) in run order.
GRID = ((0.1, 0), (0.05, 0), (0.1, 1), (0.05, 1), (1.0, 0), (0.25, 0), (0.5, 0))


def get_sweep(arg=None):
    arg = config_lib.parse_arg(arg, steps=600, runlocal=False)
    options = f",steps={arg.steps}" + (",runlocal" if arg.runlocal else "")
    return [
        Run(
            name=f"{model}_data{round(100 * ratio):03d}_seed{seed}",
            config=f"configs/cifar10.py:{model},fraction={ratio:g}{options}",
            overrides={"seed": seed},
        )
        for ratio, seed in GRID
        for model in MODELS
    ]
