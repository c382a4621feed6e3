"""Experiment configs: variants, arguments and the schedules they select."""

import importlib.util
import pathlib

import numpy as np
import pytest

from prs_jax import models
from prs_jax.method import optimizer, schedule
from prs_jax.training import config_lib, validation
from prs_jax.training.state import create_model

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


def load_module(name):
    """configs/NAME.py as a module; NAME may hold a folder (sweeps/cifar10_study)."""
    spec = importlib.util.spec_from_file_location(
        pathlib.PurePath(name).name, CONFIG_DIR / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(name):
    return load_module(name).get_config


@pytest.mark.parametrize(
    "arg,model,first,last",
    [
        (None, "convit_tiny", 150.0, 50.0),
        ("prs", "convit_tiny", 150.0, 50.0),
        ("reversed", "convit_tiny", 50.0, 150.0),
        ("uniform", "convit_tiny", 100.0, 100.0),
        ("uniform,switch=60", "convit_tiny", 60.0, 60.0),
        ("convit", "convit_tiny", 0.0, 0.0),
        ("conv", "convit_tiny", 300.0, 300.0),
        ("prs,model=convit_small", "convit_small", 150.0, 50.0),
        ("prs,epochs=60", "convit_tiny", 30.0, 10.0),
    ],
)
def test_cifar100_vit_variants_select_their_schedule(arg, model, first, last):
    config = load("cifar100")(arg)
    assert config.model.name == model
    assert config.schedule.first_layer_switch_epoch == pytest.approx(first)
    assert config.schedule.last_layer_switch_epoch == pytest.approx(last)
    assert config.data.name == "cifar100" and config.data.image_size == 32


@pytest.mark.parametrize("arg,model", [("deit", "deit_tiny"), ("resnet18", "resnet18")])
def test_cifar100_baselines(arg, model):
    config = load("cifar100")(arg)
    assert config.model.name == model
    assert model in models.MODEL_NAMES


@pytest.mark.parametrize(
    "arg,model",
    [
        ("deit,model=convit_tiny", "deit_tiny"),
        ("deit,model=convit_small", "deit_small"),
        ("deit,model=convit_base", "deit_base"),
        ("deit,model=deit_small", "deit_small"),  # a DeiT name is its own twin
    ],
)
def test_deit_variant_trains_the_deit_twin_of_each_convit_size(arg, model):
    config = load("cifar100")(arg)
    assert config.model.name == model
    assert models.VIT_VARIANTS[model]["num_gpsa_layers"] == 0


@pytest.mark.parametrize(
    "arg,message",
    [
        (
            "deit,model=resnet18",
            "variant 'deit' trains a DeiT: model='resnet18' is not allowed; "
            "choose one of convit_tiny, convit_small, convit_base, deit_tiny, "
            "deit_small, deit_base$",
        ),
        (
            "prs,model=deit_small",
            "variant 'prs' schedules GPSA layers: model='deit_small' is not "
            "allowed; choose one of convit_tiny, convit_small, convit_base$",
        ),
    ],
)
def test_a_model_the_variant_cannot_use_is_an_error_naming_the_choices(arg, message):
    with pytest.raises(ValueError, match=message):
        load("cifar100")(arg)


def test_runlocal_shrinks_the_run_but_keeps_the_variant():
    full, local = load("cifar100")("prs"), load("cifar100")("prs,runlocal")
    assert local.num_epochs < full.num_epochs and local.batch_size < full.batch_size
    assert local.model.depth == 4 and local.model.num_gpsa_layers == 2
    # PRS proportions are kept: the shallow layer switches at half the (shorter) run.
    assert local.schedule.first_layer_switch_epoch == pytest.approx(local.num_epochs / 2)


def test_unknown_variant_and_argument_are_errors_that_list_the_choices():
    with pytest.raises(ValueError, match="unknown variant 'vit'.*resnet18"):
        load("cifar100")("vit")
    with pytest.raises(ValueError, match=r"unknown config argument 'epoch'.*epochs"):
        load("cifar100")("epoch=3")


def test_parse_arg_types_values_from_the_defaults():
    arg = config_lib.parse_arg(
        "convit,runlocal,epochs=12,model=deit_small",
        variant="prs",
        runlocal=False,
        epochs=300.0,
        model="x",
    )
    assert arg.variant == "convit" and arg.runlocal is True
    assert arg.epochs == 12.0 and isinstance(arg.epochs, float)
    assert arg.model == "deit_small"


def test_digits_default_config_is_a_prs_vit_on_digits():
    config = load("digits")()
    assert config.data.name == "digits" and not config.data.random_flip
    assert config.model.num_gpsa_layers == 4 and config.model.depth == 6
    # PRS: the shallowest GPSA layer switches last.
    assert config.schedule.first_layer_switch_epoch > config.schedule.last_layer_switch_epoch
    assert config.data.image_size % config.model.patch_size == 0


def test_select_variant_sets_model_and_schedule_and_names_every_choice():
    config = config_lib.base_config()
    config.num_epochs = 90.0
    config_lib.select_variant(config, "uniform", vit="convit_small", switch=30.0)
    assert config.model.name == "convit_small"
    assert config.schedule.first_layer_switch_epoch == config.schedule.last_layer_switch_epoch == 30
    config_lib.select_variant(config, "deit")
    assert config.model.name == "deit_tiny"
    config_lib.select_variant(config, "resnet50", resnets={"resnet50": {"stem": "imagenet"}})
    assert config.model.name == "resnet50"
    assert config_lib.model_overrides(config.model) == {"stem": "imagenet"}  # no ViT field left
    with pytest.raises(
        ValueError, match="choose one of prs, reversed, uniform, convit, conv, deit, resnet18$"
    ):
        config_lib.select_variant(config, "vit", resnets={"resnet18": {}})


@pytest.mark.parametrize("name", ["cifar100", "imagenet"])
def test_runlocal_keeps_a_uniform_switch_epoch_within_its_short_run(name):
    config = load(name)("uniform,switch=0.5,runlocal")
    assert (
        config.schedule.first_layer_switch_epoch == config.schedule.last_layer_switch_epoch == 0.5
    )


# --- the DeiT optimizer recipe -------------------------------------------------------------------

CONFIG_ARGS = [
    ("cifar100", a) for a in ("prs", "convit", "conv", "deit", "resnet18", "prs,runlocal")
]
CONFIG_ARGS += [("imagenet", a) for a in ("prs", "deit", "resnet50", "prs,runlocal")]
CONFIG_ARGS += [("digits", None), ("digits", "deit")]


@pytest.mark.parametrize("name,arg", CONFIG_ARGS)
def test_no_config_clips_gradients_as_in_deit_and_convit(name, arg):
    assert config_lib.base_config().optimizer.grad_clip_norm == 0.0
    assert load(name)(arg).optimizer.grad_clip_norm == 0.0


@pytest.mark.parametrize(
    "name,arg,batch_size,rate,note",
    [
        ("cifar100", "prs", None, 1.25e-4, "learning rate 1.25e-4 = 5e-4 x 128 / 512"),
        ("cifar100", "prs", 256, 2.5e-4, "learning rate 2.5e-4 = 5e-4 x 256 / 512"),
        ("imagenet", "prs", None, 1e-3, "learning rate 1e-3 = 5e-4 x 1024 / 512"),
        ("imagenet", "prs,runlocal", None, 6.25e-5, "learning rate 6.25e-5 = 5e-4 x 64 / 512"),
        ("imagenet", "deit", 4096, 4e-3, "learning rate 4e-3 = 5e-4 x 4096 / 512"),
        # digits sets an absolute rate: a batch size override leaves it alone.
        ("digits", None, 256, 1e-3, "learning rate 1e-3 (absolute, batch size 256)"),
    ],
)
def test_the_learning_rate_follows_deits_scaling_rule_after_a_batch_size_override(
    name, arg, batch_size, rate, note
):
    config = load(name)(arg)
    if batch_size:
        config.batch_size = batch_size  # as --config.batch_size=N does, after get_config
    assert optimizer.resolve_learning_rate(config.optimizer, config.batch_size) == (
        pytest.approx(rate, rel=1e-12),
        note,
    )
    assert config.optimizer.warmup_learning_rate == 1e-6  # DeiT's warmup_lr


@pytest.mark.parametrize(
    "changes,message",
    [
        (
            dict(learning_rate=1e-3),
            r"config.optimizer.learning_rate=0.001 \(absolute\) and "
            r"optimizer.learning_rate_per_512=0.0005 \(scaled by batch_size / 512\) are both set",
        ),
        (
            dict(learning_rate_per_512=0.0),
            r"learning_rate_per_512=0.0 and optimizer.learning_rate"
            r"=0.0: one must be > 0",
        ),
        (dict(learning_rate=-1.0, learning_rate_per_512=0.0), r"must be >= 0"),
        (
            dict(warmup_learning_rate=1.0),
            r"config.optimizer.warmup_learning_rate=1.0 is not "
            r"allowed: use in \[0, the peak learning rate 0.000125\]",
        ),
    ],
)
def test_contradictory_or_missing_learning_rates_are_rejected(changes, message):
    config = load("cifar100")("prs")
    config.optimizer.update(changes)
    with pytest.raises(validation.ConfigError, match=message):
        validation.validate_config(config, device_count=1)


# --- Model fields from the command line --------------------------------------------------


def parse_flags(*args):
    """The config that prs_jax.main's --config flag gives for `args` (locked, as main's is)."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["prog", *args]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    flag_values(argv)
    return flag_values.config


def build(config, num_classes=100):

    validation.validate_config(config, device_count=1)
    return create_model(config, num_classes)


def test_a_model_size_field_can_be_set_with_a_config_flag():
    config = parse_flags(
        f"--config={CONFIG_DIR / 'cifar100.py'}",
        "--config.model.hidden_size=128",
        "--config.model.mlp_ratio=2",
    )
    model = build(config)
    assert (model.hidden_size, model.mlp_ratio) == (128, 2.0)
    # Fields left unset keep ConViT-Ti's sizes and the model's defaults.
    assert (model.num_heads, model.depth, model.num_gpsa_layers) == (4, 12, 10)
    assert model.locality_strength == 1.0 and model.patch_size == 4


def test_a_model_size_field_can_be_set_in_a_sweep_override():
    from prs_jax import sweep

    config = sweep.load_config(f"{CONFIG_DIR / 'cifar100.py'}:deit", {"model.depth": 6})
    model = build(config)
    assert (model.depth, model.hidden_size, model.num_gpsa_layers) == (6, 192, 0)


def test_unset_model_fields_build_the_named_model_and_a_resnet_config_still_works():
    model = build(load("cifar100")("prs"))
    assert (model.hidden_size, model.num_heads, model.depth) == (192, 4, 12)
    resnet = build(
        parse_flags(f"--config={CONFIG_DIR / 'cifar100.py'}:resnet18", "--config.model.width=32")
    )
    assert (type(resnet).__name__, resnet.stem, resnet.width) == ("ResNet", "cifar", 32)


@pytest.mark.parametrize(
    "arg,flag,message",
    [
        (
            "resnet18",
            "--config.model.num_gpsa_layers=2",
            r"config.model.num_gpsa_layers=2 does not apply to model 'resnet18': leave it unset, or "
            r"set one of its fields: stem, width, zero_init_residual, dtype$",
        ),
        (
            "prs",
            "--config.model.width=64",
            r"config.model.width=64 does not apply to model 'convit_tiny': leave it unset, or set "
            r"one of its fields: patch_size, hidden_size, depth",
        ),
    ],
)
def test_a_model_field_the_named_model_lacks_is_a_config_error(arg, flag, message):
    config = parse_flags(f"--config={CONFIG_DIR / 'cifar100.py'}:{arg}", flag)
    with pytest.raises(validation.ConfigError, match=message):
        validation.validate_config(config, device_count=1)


def test_the_base_config_holds_every_field_of_every_model():
    fields = set(config_lib.model_config("convit_tiny")) - {"name"}
    assert fields == set(models.VIT_FIELDS) | set(models.RESNET_FIELDS)
    assert all(config_lib.model_config("resnet18")[f] is None for f in fields)


def test_a_run_saved_before_the_placeholders_resumes():
    """A saved config.model without the unset fields equals today's with them as None."""
    new = load("cifar100")("prs").to_dict()
    saved = {**new, "model": config_lib.model_overrides(new["model"]) | {"name": "convit_tiny"}}
    assert validation.resume_differences(saved, new) == ([], [])


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.25, 0.5, 1.0])
def test_cifar10_runs_take_the_same_number_of_steps_at_every_ratio(fraction):
    from prs_jax.data import subsets

    # CIFAR-10's train folders: 10 classes of 5,000; a balanced 10% is held out for validation.
    labels = np.repeat(np.arange(10), 5000)
    held_out = np.zeros(labels.size, bool)
    held_out[subsets.class_balanced_subset(labels, 0.1, 0)] = True
    train_labels = labels[~held_out]
    num_train = len(subsets.class_balanced_subset(train_labels, fraction, 0))
    module = load_module("cifar10")
    assert module.train_examples(fraction) == num_train

    config = module.get_config(f"prs,fraction={fraction},steps=600")
    steps = schedule.training_steps(
        num_train, config.batch_size, config.num_epochs, config.optimizer.warmup_epochs
    )
    assert steps.total_steps == 600
    assert config.data.train_fraction == fraction
    assert config.data.folder_validation_fraction == 0.1
    # PRS: the shallowest GPSA layer switches at half the run, the deepest at a sixth.
    assert config.schedule.first_layer_switch_epoch == pytest.approx(config.num_epochs / 2)
    assert config.schedule.last_layer_switch_epoch == pytest.approx(config.num_epochs / 6)


def test_cifar10_models_are_a_convit_its_deit_twin_and_a_narrow_resnet():
    get_config = load("cifar10")
    convit, deit, resnet = (get_config(v) for v in ("convit", "deit", "resnet"))
    assert convit.model.num_gpsa_layers == 4 and deit.model.num_gpsa_layers == 0
    for field in ("hidden_size", "depth", "num_heads", "patch_size"):
        assert convit.model[field] == deit.model[field]
    assert resnet.model.name == "resnet18" and resnet.model.width == 24
    ablation = get_config("prs,first=0.4,last=0.2,ramp=0.1")
    assert ablation.schedule.first_layer_switch_epoch == pytest.approx(0.4 * ablation.num_epochs)
    assert ablation.schedule.ramp_epochs == pytest.approx(0.1 * ablation.num_epochs)
    with pytest.raises(ValueError, match="give both first= and last="):
        get_config("prs,first=0.4")
    with pytest.raises(ValueError, match="variant 'deit' has none"):
        get_config("deit,first=0.4,last=0.2")


def test_cifar10_sweep_covers_every_model_and_ratio_with_two_seeds_where_data_is_small():
    from prs_jax import sweep

    runs = sweep.load_sweep("configs/sweeps/cifar10_ratios.py")
    assert len(runs) == 35 and len({r.name for r in runs}) == 35
    seeds = {}
    for run in runs:
        config = sweep.load_config(run.config, run.overrides)
        key = (
            config.model.name,
            config.model.get("num_gpsa_layers"),
            config.schedule.first_layer_switch_epoch / config.num_epochs,
            config.data.train_fraction,
        )
        seeds.setdefault(key, set()).add(config.seed)
    assert len(seeds) == 25  # 5 models x 5 ratios
    assert all(s == ({0, 1} if key[-1] <= 0.1 else {0}) for key, s in seeds.items())
    # The small-data comparison comes first, so a sweep cut short still answers it.
    assert all("data010_seed0" in r.name for r in runs[:5])


def test_cifar10_ablation_changes_one_thing_per_run_against_its_10pct_baseline():
    from prs_jax import sweep

    def flat(config):
        return {k: v for k, v in config.to_dict().items() if k != "seed"}

    def differences(run, baseline_variant):
        config = sweep.load_config(run.config, run.overrides)
        base = sweep.load_config(f"configs/cifar10.py:{baseline_variant},fraction=0.1")
        assert config.seed == 0 and config.data.train_fraction == 0.1
        a, b = flat(config), flat(base)
        return {k for k in a if a[k] != b[k]}, config, base

    runs = {
        r.name.removesuffix("_data010_seed0"): r
        for r in sweep.load_sweep("configs/sweeps/cifar10_ablation.py")
    }
    assert len(runs) == 9
    for name in ("prs_steps1800", "convit_steps1800", "uniform_steps1800", "deit_steps1800"):
        changed, config, base = differences(runs[name], name.split("_")[0])
        assert config.num_epochs == pytest.approx(3 * base.num_epochs), name  # 1,800 steps
        assert config.model == base.model and config.data == base.data, name
    changed, config, base = differences(runs["prs_train_content_path"], "prs")
    assert changed == {"optimizer"}
    assert not config.optimizer.pause_content_path_while_conv
    assert base.optimizer.pause_content_path_while_conv
    for name in ("prs_ramp010", "prs_late", "prs_early"):
        changed, config, base = differences(runs[name], "prs")
        assert changed == {"schedule"}, (name, changed)
    _, late, base = differences(runs["prs_late"], "prs")
    assert late.schedule.first_layer_switch_epoch > base.schedule.first_layer_switch_epoch


def test_cifar10_curves_vary_only_the_rate_per_family_and_evaluate_every_250_steps():
    from prs_jax import sweep

    runs = sweep.load_sweep("configs/sweeps/cifar10_curves.py")
    assert len(runs) == 9
    # ConViT first: its rate serves four of the study's five models.
    assert [r.name for r in runs[:3]] == [f"convit_lr{k}x_data010_seed0" for k in (1, 4, 8)]
    for run in runs:
        family, multiple = run.name.split("_")[0], int(run.name.split("_")[1][2:-1])
        config = sweep.load_config(run.config, run.overrides)
        base = sweep.load_config(f"configs/cifar10.py:{family},fraction=0.1,steps=6000")
        assert config.seed == 0 and config.data.train_fraction == 0.1
        assert config.optimizer.learning_rate_per_512 == pytest.approx(5e-4 * multiple)
        assert config.model == base.model and config.data == base.data
        assert config.schedule == base.schedule
        steps_per_epoch = load_module("cifar10").train_examples(0.1) // config.batch_size
        assert config.eval_every_epochs * steps_per_epoch == pytest.approx(250)
    with pytest.raises(ValueError, match="lr=0.0; must be a positive multiple"):
        load("cifar10")("convit,lr=0")


def test_cifar10_study_seed0_runs_are_the_curves_at_each_chosen_rate():
    """The sweep skips a run whose workdir finished with the same config, so the study's seed-0
    run of a family must be its curve at the chosen rate: same name, same resolved config."""
    from prs_jax import sweep

    study = load_module("sweeps/cifar10_study")
    curves = {r.name: r for r in sweep.load_sweep("configs/sweeps/cifar10_curves.py")}
    runs = {r.name: r for r in sweep.load_sweep("configs/sweeps/cifar10_study.py")}
    chosen = {f: k for f, k in study.RATE_MULTIPLE.items() if k is not None}
    assert chosen, "no family's rate is chosen: the study would run nothing"
    for model, family in (("convit", "gpsa"), ("deit", "deit"), ("resnet", "resnet")):
        if family not in chosen:
            assert not [name for name in runs if name.startswith(f"{model}_")]
            continue
        name = f"{model}_lr{chosen[family]:g}x_data010_seed0"
        assert name in runs and name in curves
        assert sweep.load_config(runs[name].config, runs[name].overrides) == sweep.load_config(
            curves[name].config, curves[name].overrides
        )


def test_cifar10_study_runs_share_the_budget_and_a_rate_per_family_in_priority_order():
    from prs_jax import sweep

    study = load_module("sweeps/cifar10_study")
    runs = sweep.load_sweep("configs/sweeps/cifar10_study.py")
    names = [r.name for r in runs]
    assert len(set(names)) == len(names)
    fractions = []
    for run in runs:
        config = sweep.load_config(run.config, run.overrides)
        model = run.name.split("_")[0]
        multiple = study.RATE_MULTIPLE[study.FAMILY[model]]
        assert multiple is not None
        assert config.optimizer.learning_rate_per_512 == pytest.approx(5e-4 * multiple)
        epoch_steps = load_module("cifar10").train_examples(config.data.train_fraction) // 128
        assert config.num_epochs * epoch_steps == pytest.approx(study.STEPS)
        fractions.append(config.data.train_fraction)
        if "_at" in run.name:  # the switch sweep: every GPSA layer at the same fraction of the run
            at = int(run.name.split("_at")[1][:3]) / 100
            assert config.schedule.first_layer_switch_epoch == pytest.approx(at * config.num_epochs)
            assert config.schedule.last_layer_switch_epoch == pytest.approx(at * config.num_epochs)
            assert config.seed == 0 and config.data.train_fraction == 0.1
    # 10% (the comparison with 3 seeds, then the switch sweep) before the other data ratios.
    first_other = next(i for i, f in enumerate(fractions) if f != 0.1)
    assert set(fractions[:first_other]) == {0.1} and 0.1 not in fractions[first_other:]
    if study.RATE_MULTIPLE["gpsa"] is not None:
        seeds = {int(n[-1]) for n in names if n.startswith("prs_") and "_data010_" in n}
        assert seeds == {0, 1, 2}
