r"""The data-scale study: ResNet, DeiT, ConViT and PRS on 5, 10, 25, 50 and 100% of the data.

  python -m prs_jax.sweep configs/sweeps/data_ratios.py --root ~/runs/ratios --dry_run
  python -m prs_jax.sweep configs/sweeps/data_ratios.py --root ~/runs/ratios
  python -m prs_jax.report --workdirs ~/runs/ratios --out ~/runs/ratios/report

20 runs (4 models x 5 ratios), named MODEL_dataPCT (e.g. prs_data010). Each trains on the
class-balanced, nested subset `data.train_fraction` (subset_seed 0: every model sees the same
examples at a ratio) for the config's full number of epochs, so a smaller ratio is fewer
steps; evaluation is always on the whole test (validation) split.

Arguments (`data_ratios.py:ARGS`): `dataset=cifar100` (default) or `imagenet`;
`resnet=resnet50` (ImageNet; default resnet18); `epochs=E`; `runlocal` (each config's laptop
shrink: small models, few epochs; the ratios stay).

Hardware and time: CIFAR-100, one A100 or TPU v3-8: about 1-3 h per 100% run at 300 epochs
(estimate, not yet measured); the whole sweep is about 2.2 times the four 100% runs.
Expected (the PRS paper's claim): the ConViT-style models beat DeiT at every ratio, ResNet
wins the smallest ratios, and PRS improves on ConViT most at the small ratios.
"""

from prs_jax.sweep import Run
from prs_jax.training import config_lib

RATIOS = (0.05, 0.1, 0.25, 0.5, 1.0)
CONFIG_FILES = {"cifar100": "configs/cifar100.py", "imagenet": "configs/imagenet.py"}


def get_sweep(arg=None):
    arg = config_lib.parse_arg(
        arg, dataset="cifar100", resnet="resnet18", runlocal=False, epochs=-1.0
    )
    if arg.dataset not in CONFIG_FILES:
        raise ValueError(f"unknown dataset {arg.dataset!r}; choose one of {sorted(CONFIG_FILES)}")
    if arg.dataset == "cifar100" and arg.resnet != "resnet18":
        raise ValueError("configs/cifar100.py has resnet18 only")
    options = ",runlocal" if arg.runlocal else ""
    options += f",epochs={arg.epochs:g}" if arg.epochs > 0 else ""
    models = {"resnet": arg.resnet, "deit": "deit", "convit": "convit", "prs": "prs"}
    runs = []
    for model, variant in models.items():
        for ratio in RATIOS:
            runs.append(
                Run(
                    name=f"{model}_data{round(100 * ratio):03d}",
                    config=f"{CONFIG_FILES[arg.dataset]}:{variant}{options}",
                    overrides={"data.train_fraction": ratio},
                )
            )
    return runs
