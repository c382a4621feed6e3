r"""The ablation at 10% of CIFAR-10 (configs/cifar10.py) that the data-scale study calls for: why
PRS, the uniform switch and ConViT end within half a point of each other at 600 steps.

  python -m prs_jax.sweep configs/sweeps/cifar10_ablation.py --root ~/runs/c10_ablation --dry_run
  python -m prs_jax.sweep configs/sweeps/cifar10_ablation.py --root ~/runs/c10_ablation
  python -m prs_jax.report --workdirs ~/runs/c10_ablation ~/runs/c10/*_data010_seed0 \
      --out results/cifar10/ablation

Every run is seed 0 at 10% (4,500 images), the baseline being configs/sweeps/cifar10_ratios.py's
`*_data010_seed0` runs; with two seeds there the half-difference between seeds was 0.2-0.4
points for the ViTs, so a change smaller than about 0.5 points is not evidence. What each group
varies, in run order (first the schedule and optimizer choices that the study names, each a
600-step run of about 8 minutes; then the longer budget, 22-28 minutes a run, so that a sweep cut
short keeps the complete schedule ablation):

- ramp: each layer's conv strength ramps from 1 to 0 over 10% of the run instead of a hard
  switch.
- switch points: the shallowest and deepest GPSA layers switching later (3/4 and 1/4 of the
  run) and earlier (1/3 and 1/10) than PRS's default (1/2 and 1/6); and the reversed order
  (shallow layers first) at the default points.
- optimizer at the switch: the GPSA content path trained while its layer is still a
  convolution (`optimizer.pause_content_path_while_conv=False`), as a plain AdamW would.
- budget: 1,800 steps instead of 600 (51 epochs instead of 17) for PRS, ConViT, the uniform
  switch and DeiT. 5% and 10% gave the same accuracy at 600 steps, so the runs are limited by
  their updates; if PRS's edge over ConViT grows with training, it shows here.
"""

from prs_jax.sweep import Run

FRACTION = 0.1
LONG_STEPS = 1800


def _run(name: str, variant: str, options: str = "", **overrides) -> Run:
    return Run(
        name=f"{name}_data010_seed0",
        config=f"configs/cifar10.py:{variant},fraction={FRACTION:g}{options}",
        overrides={"seed": 0, **overrides},
    )


def get_sweep(arg=None):
    del arg
    return [
        _run("prs_ramp010", "prs", ",ramp=0.1"),
        _run("prs_late", "prs", ",first=0.75,last=0.25"),
        _run("prs_early", "prs", ",first=0.33,last=0.1"),
        _run("reversed", "reversed"),
        _run("prs_train_content_path", "prs", **{"optimizer.pause_content_path_while_conv": False}),
        _run("prs_steps1800", "prs", f",steps={LONG_STEPS}"),
        _run("convit_steps1800", "convit", f",steps={LONG_STEPS}"),
        _run("uniform_steps1800", "uniform", f",steps={LONG_STEPS}"),
        _run("deit_steps1800", "deit", f",steps={LONG_STEPS}"),
    ]
