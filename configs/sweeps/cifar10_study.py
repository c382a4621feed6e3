r"""The converged study on CIFAR-10 folders (configs/cifar10.py), at the budget and rates that the
learning curves chose (configs/sweeps/cifar10_curves.py), on a 2-core CPU.

  python -m prs_jax.sweep configs/sweeps/cifar10_study.py --root ~/runs/c10_study --dry_run
  python -m prs_jax.sweep configs/sweeps/cifar10_study.py --root ~/runs/c10_study
  # its report, over the study's runs alone: ~/runs/c10_study/report_cifar10_study.{md,csv,png}
  # and report_cifar10_study_curves.*, written by the sweep at its end.

The curves sweep shares the root: its seed-0 runs at a family's chosen rate are the study's
seed-0 runs of that family (the same name, the same config), so the sweep finds them finished.

Budget: 6,000 optimizer steps of batch 128 (768,000 images presented) for every model, ratio and
seed, with the cosine schedule over the whole run, 24 evaluations on the validation split (every
250 steps: every run is a learning curve). The length was chosen on the ConViT's curves at 10%,
whose last quarter added about 1 point (+0.90 at the DeiT rule's rate, +0.88 at 4x); the study's
own runs add 0.6-2.3 points in theirs (README), so they end near, not at, their plateau.
Equal steps at every ratio is ConViT's protocol: the same images presented whatever the ratio.

Rates, as multiples K of the DeiT rule's 5e-4 x 128 / 512 (`lr=K`), one per model family and
chosen on the validation split alone: `RATE_MULTIPLE` below, with the curves that chose it. The
GPSA family's rate serves every schedule (ConViT, uniform switch, PRS, the switch sweep and the
pure-conv variant): never tuned for PRS alone.

Expected final top-1 on the validation split at 10% (seeds 0-2, mean +- sd; 2-core CPU, 32-35
min per ViT run alone, 41-44 per ResNet run): ConViT 60.75 +- 0.60%, uniform switch 62.63 +-
0.54%, PRS 62.66 +- 0.53%, DeiT twin 55.51 +- 0.44%, ResNet-18 75.96 +- 0.47%. PRS - ConViT
+1.91 points (paired p = 0.03), PRS - uniform +0.03 (p = 0.89). Switch sweep, seed 0: never
switching (`conv`) 63.06%, the switches at 1/4, 1/2 and 3/4 63.02, 62.74 and 62.90%; their
mean high-frequency values -1.757, -1.765, -1.767 and -1.760 against the ConViT's -1.732.

Runs, named MODEL_lrKx_dataPCT_seedS, in the order that answers the study's questions soonest:
  1. 10%: ConViT, uniform switch (at 1/3 of the run) and PRS, then the DeiT twin and
     ResNet-18, seed 0, then seeds 1 and 2 (item 2 of the issue: 5 models x 3 seeds).
  2. 10%, seed 0: the uniform switch at 1/4, 1/2 and 3/4 of the run (`uniform_at025` ...) and
     never (`conv`); ConViT is the switch at 0. Whether the Fourier profile moves from the ViT's
     to the CNN's as the switch comes later.
  3. 5% and 100%, seed 0, the five models: the data scale.
The switch sweep's figure (item 2 above), beside ResNet and DeiT (their chosen rates in K, R):
  python -m prs_jax.fourier --output_dir results/cifar10/study/fourier --compare \
      ~/runs/c10_study/{resnet_lrRx,deit_lrKx,convit_lr4x,uniform_at025_lr4x,uniform_lr4x,\
uniform_at050_lr4x,uniform_at075_lr4x,conv_lr4x}_data010_seed0
writes the high-frequency profiles on one plot, a table of each run's switch point, mean
high-frequency value and top-1, and interpolation.png (both against the switch point).
Families whose rate is not chosen yet (their curves still training) are left out, so that the
sweep never runs at a rate the evidence has not picked; `MISSING` names them.
"""

from prs_jax.sweep import Run
from prs_jax.training import config_lib

STEPS, EVALS = 6000, 24
# Chosen rate multiple per family (configs/sweeps/cifar10_curves.py, validation split, seed 0,
# final top-1 at 6,000 steps; the rule: the best, with rates within 1 point of it tied and the
# lowest tied rate taken). None until that family's curves are in.
#   gpsa (the ConViT's curves): 1x 53.06%, 4x 60.50%, 8x 60.92% -> 4x (8x leads by 0.42).
#   deit (the DeiT twin's): 4x 55.46%, 8x 55.04% -> 4x (the best; its 1x curve runs later).
#   resnet (ResNet-18's): 4x 72.84%, 8x 76.20% -> 8x, the top of the grid (16x is untried).
RATE_MULTIPLE = {"gpsa": 4, "deit": 4, "resnet": 8}
FAMILY = {
    "convit": "gpsa",
    "uniform": "gpsa",
    "prs": "gpsa",
    "conv": "gpsa",
    "deit": "deit",
    "resnet": "resnet",
}
MAIN_MODELS = ("convit", "uniform", "prs", "deit", "resnet")  # configs/cifar10.py variants
SEEDS = (0, 1, 2)
SWITCH_POINTS = (0.25, 0.5, 0.75)  # uniform switches as fractions of the run
OTHER_FRACTIONS = (0.05, 1.0)
MISSING = tuple(family for family, rate in RATE_MULTIPLE.items() if rate is None)


def _run(model: str, fraction: float, seed: int, options: str, extra: str = "", tag: str = ""):
    rate = RATE_MULTIPLE[FAMILY[model]]
    if rate is None:
        return None
    return Run(
        name=f"{model}{tag}_lr{rate:g}x_data{round(100 * fraction):03d}_seed{seed}",
        config=f"configs/cifar10.py:{model},fraction={fraction:g},lr={rate:g}{extra}{options}",
        overrides={"seed": seed},
    )


def get_sweep(arg=None):
    arg = config_lib.parse_arg(arg, steps=STEPS, evals=EVALS, runlocal=False)
    options = f",steps={arg.steps},evals={arg.evals}" + (",runlocal" if arg.runlocal else "")
    runs = [_run(model, 0.1, seed, options) for seed in SEEDS for model in MAIN_MODELS]
    runs += [
        _run("uniform", 0.1, 0, options, f",first={at:g},last={at:g}", f"_at{round(100 * at):03d}")
        for at in SWITCH_POINTS
    ]
    runs.append(_run("conv", 0.1, 0, options))
    runs += [
        _run(model, fraction, 0, options) for fraction in OTHER_FRACTIONS for model in MAIN_MODELS
    ]
    return [run for run in runs if run is not None]
