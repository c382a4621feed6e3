r"""The uniform-switch study: every GPSA layer switches from convolution to self-attention at
0, 25, 50, 75 or 100% of training (0% is ConViT, 100% a convolutional ViT), against PRS.

  python -m prs_jax.sweep configs/sweeps/uniform_switch.py --root ~/runs/switch --dry_run
  python -m prs_jax.sweep configs/sweeps/uniform_switch.py:train_fraction=0.1 --root ~/runs/switch10
  python -m prs_jax.report --workdirs ~/runs/switch --out ~/runs/switch/report

6 runs: uniform_switch000 ... uniform_switch100 and prs; all ConViT-Ti. The report plots top-1
against conv epochs (the switch epoch; PRS at the mean of its layers' switch epochs).

Arguments (`uniform_switch.py:ARGS`): `dataset=cifar100` (default) or `imagenet`;
`train_fraction=0.1` (a class-balanced subset, the same for every run); `epochs=E`;
`runlocal`.

Hardware and time: CIFAR-100, one A100 or TPU v3-8, 300 epochs: six runs of a few hours each
(estimate). Expected (the PRS paper): accuracy peaks at an intermediate switch epoch on small
data, and PRS matches or beats the best uniform switch.
"""

from prs_jax import sweep
from prs_jax.sweep import Run
from prs_jax.training import config_lib

SWITCH_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)  # of the run's epochs
CONFIG_FILES = {"cifar100": "configs/cifar100.py", "imagenet": "configs/imagenet.py"}


def get_sweep(arg=None):
    arg = config_lib.parse_arg(
        arg, dataset="cifar100", runlocal=False, epochs=-1.0, train_fraction=1.0
    )
    if arg.dataset not in CONFIG_FILES:
        raise ValueError(f"unknown dataset {arg.dataset!r}; choose one of {sorted(CONFIG_FILES)}")
    options = ",runlocal" if arg.runlocal else ""
    options += f",epochs={arg.epochs:g}" if arg.epochs > 0 else ""
    data = {"data.train_fraction": arg.train_fraction} if arg.train_fraction < 1 else {}
    uniform = f"{CONFIG_FILES[arg.dataset]}:uniform{options}"
    # The switch epochs are set as fields (not `switch=E`) so they follow the config's epochs,
    # runlocal's included.
    num_epochs = sweep.load_config(uniform).num_epochs
    runs = []
    for fraction in SWITCH_FRACTIONS:
        epoch = fraction * num_epochs
        runs.append(
            Run(
                name=f"uniform_switch{round(100 * fraction):03d}",
                config=uniform,
                overrides={
                    "schedule.first_layer_switch_epoch": epoch,
                    "schedule.last_layer_switch_epoch": epoch,
                    **data,
                },
            )
        )
    runs.append(Run(name="prs", config=f"{CONFIG_FILES[arg.dataset]}:prs{options}", overrides=data))
    return runs
