"""timm interop: converted weights reproduce timm's logits; export, import and their errors.

The reference fixtures in tests/fixtures/timm (reduced timm models and timm's logits for fixed
images) were made once by scripts/make_timm_fixtures.py; CI needs no torch. The `test_live_*`
tests compare with timm itself, both ways, and run only where torch and timm import.
"""

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prs_jax import convert, models
from prs_jax.models import timm_weights
from prs_jax.training.state import TrainState, create_mesh, create_model, init_from_weights

FIXTURES = Path(__file__).parent / "fixtures" / "timm"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())["fixtures"]
SCRIPT = Path(__file__).parents[1] / "scripts" / "make_timm_fixtures.py"
# float32, eval mode (issue 6).
PARITY_TOLERANCE = 1e-4


def fixture_path(name: str) -> str:
    return str(FIXTURES / f"{name}.safetensors")


def load_fixture(name: str, **kwargs):
    """(model, variables) of a fixture file, through the public loader."""
    spec = MANIFEST[name]
    return timm_weights.load_timm(
        fixture_path(name), spec["prs_name"], **{**spec["prs_overrides"], **kwargs}
    )


@functools.cache
def apply_fn(model):
    """Eval-mode logits at conv strength s (f32[L]); one compilation per model."""
    return jax.jit(lambda variables, images, s: model.apply(variables, images, s, train=False))


def logits(model, variables, images, conv_strength=None):
    if conv_strength is None:
        conv_strength = np.zeros((model.num_gpsa_layers,), np.float32)
    return np.asarray(apply_fn(model)(variables, images, jnp.asarray(conv_strength, jnp.float32)))


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def max_abs_difference(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


# --- Parity with timm, from the committed reference fixtures --------------------------------


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_fixture_logits_match_timm(name):
    model, variables = load_fixture(name)
    reference = np.load(FIXTURES / f"{name}.io.npz")
    difference = max_abs_difference(
        logits(model, variables, reference["images"]), reference["logits"]
    )
    assert difference < PARITY_TOLERANCE, f"{name}: max |logits - timm| = {difference:.2e}"


def test_infer_model_fields_reads_sizes_from_the_file():
    read = lambda name: timm_weights.read_state_dict(fixture_path(name))  # noqa: E731
    # ConViT: heads from the gates, GPSA blocks from the qk weights; timm's LayerNorm eps.
    assert timm_weights.infer_model_fields(read("convit_small"), "convit_small") == dict(
        num_classes=10,
        layer_norm_epsilon=1e-6,
        patch_size=8,
        hidden_size=36,
        depth=3,
        num_gpsa_layers=2,
        num_heads=9,
        mlp_ratio=4.0,
    )
    # DeiT: no heads in the file (the name or the caller gives them).
    assert timm_weights.infer_model_fields(read("deit_tiny"), "deit_tiny") == dict(
        num_classes=10,
        layer_norm_epsilon=1e-6,
        patch_size=8,
        hidden_size=48,
        depth=2,
        mlp_ratio=4.0,
    )
    assert timm_weights.infer_model_fields(read("resnet50"), "resnet50") == dict(
        num_classes=10, width=4, stem="imagenet"
    )
    assert timm_weights.infer_model_fields(read("resnet18_cifar"), "resnet18")["stem"] == "cifar"
    assert timm_weights.source_image_size(read("convit_tiny")) == 32


def test_deit_of_another_width_needs_its_number_of_heads():
    with pytest.raises(ValueError, match="does not record its number of heads"):
        timm_weights.load_timm(fixture_path("deit_small"), "deit_small")


# --- Export and round trips ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["convit_tiny", "deit_tiny", "resnet50"])
def test_export_gives_back_the_timm_file(name):
    _, variables = load_fixture(name)
    original = timm_weights.read_state_dict(fixture_path(name))
    exported = timm_weights.prs_to_timm(variables)
    # BatchNorm's step counter is not a weight: dropped on import, not written on export.
    assert sorted(exported) == sorted(k for k in original if not k.endswith("num_batches_tracked"))
    for key, value in exported.items():
        np.testing.assert_array_equal(value, original[key], err_msg=key)


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("convit_tiny", dict(hidden_size=32, depth=3, num_gpsa_layers=2, patch_size=8)),
        ("deit_tiny", dict(hidden_size=24, depth=2, patch_size=8)),
        ("resnet50", dict(width=4)),
    ],
)
def test_export_then_import_gives_identical_variables(name, overrides):
    model = models.create_model(name, num_classes=7, **overrides)
    # Every tensor distinct and random (an init has zero biases, unit scales, zero means).
    rng = np.random.default_rng(0)
    variables = jax.tree.map(
        lambda x: rng.standard_normal(x.shape).astype(np.float32),
        timm_weights.abstract_variables(model, 32),
    )
    state_dict = timm_weights.prs_to_timm(variables)
    imported = timm_weights.timm_to_prs(
        state_dict,
        timm_weights.abstract_variables(model, 32),
        head_init=None,
        pos_embed_resize=None,
    )
    assert_trees_equal(imported, variables)


def test_export_to_timm_names_and_layouts():
    assert timm_weights.timm_key(("blocks_3", "attn", "qk", "kernel")) == "blocks.3.attn.qk.weight"
    assert timm_weights.timm_key(("patch_embed", "kernel")) == "patch_embed.proj.weight"
    assert (
        timm_weights.timm_key(("layer2_0", "downsample_conv", "kernel"))
        == "layer2.0.downsample.0.weight"
    )
    assert (
        timm_weights.timm_key(("layer2_0", "downsample_bn", "var"))
        == "layer2.0.downsample.1.running_var"
    )
    variables = {
        "params": {
            "head": {"kernel": np.arange(6.0).reshape(3, 2)},
            "patch_embed": {"kernel": np.zeros((8, 8, 3, 16))},
        }
    }
    state_dict = timm_weights.prs_to_timm(variables)
    np.testing.assert_array_equal(state_dict["head.weight"], np.arange(6.0).reshape(3, 2).T)
    assert state_dict["patch_embed.proj.weight"].shape == (16, 3, 8, 8)  # HWIO -> OIHW


def test_exported_gates_carry_the_conv_strength():
    model, variables = load_fixture("convit_tiny")
    images = np.load(FIXTURES / "convit_tiny.io.npz")["images"]
    conv_strength = np.array([0.7, 0.2], np.float32)
    baked = timm_weights.prs_to_timm(variables, conv_strength=conv_strength)
    # timm's gate sigmoid(lambda') is the PRS gate s + (1 - s) sigmoid(lambda).
    lam = np.asarray(variables["params"]["blocks_0"]["attn"]["gating_param"])
    np.testing.assert_allclose(
        1 / (1 + np.exp(-baked["blocks.0.attn.gating_param"])),
        0.7 + 0.3 / (1 + np.exp(-lam)),
        rtol=1e-6,
    )
    # The exported model at s = 0 (a timm ConViT) is the original model at s.
    reimported = timm_weights.timm_to_prs(baked, timm_weights.abstract_variables(model, 32))
    np.testing.assert_allclose(
        logits(model, reimported, images),
        logits(model, variables, images, conv_strength),
        atol=1e-5,
    )
    fully_convolutional = timm_weights.prs_to_timm(variables, conv_strength=[1.0, 1.0])
    assert np.all(fully_convolutional["blocks.1.attn.gating_param"] == np.inf)


def test_fresh_local_init_exports_as_convits_pos_proj_rows():
    """A fresh prs_jax GPSA exports to the pos_proj weight [H, 3] that ConViT's local_init sets."""
    model = models.create_model(
        "convit_small", num_classes=10, patch_size=8, hidden_size=36, depth=3, num_gpsa_layers=2
    )
    weight = timm_weights.prs_to_timm(timm_weights.init_variables(model, 32, jax.random.key(0)))[
        "blocks.1.attn.pos_proj.weight"
    ]
    expected = np.zeros((9, 3), np.float32)
    for h1 in range(3):  # ConViT's loops: row h1 + 3 h2 gets (dx, dy, d^2) weights
        for h2 in range(3):
            expected[h1 + 3 * h2] = [2 * (h2 - 1), 2 * (h1 - 1), -1]
    np.testing.assert_array_equal(weight, expected)


# --- Position embedding and head for another grid or number of classes ---------------------


def test_bilinear_resize_interpolates_between_patch_centres():
    # A ramp over 2 columns on 4: the new centres sit at -1/4, 1/4, 3/4, 5/4 of the old spacing.
    ramp = np.array([0.0, 1.0, 0.0, 1.0], np.float32).reshape(1, 4, 1)
    resized = timm_weights.resize_pos_embed(ramp, 16).reshape(4, 4)
    np.testing.assert_allclose(resized, np.tile([0.0, 0.25, 0.75, 1.0], (4, 1)), atol=1e-6)


def test_pos_embed_resized_for_another_image_size_class_slot_kept():
    state_dict = timm_weights.read_state_dict(fixture_path("deit_tiny"))  # [1, 1 + 4*4, 48]
    model, variables = load_fixture("deit_tiny", image_size=64)  # 8 x 8 patches
    pos_embed = variables["params"]["pos_embed"]
    assert pos_embed.shape == (1, 1 + 64, 48)
    np.testing.assert_array_equal(pos_embed[:, 0], state_dict["pos_embed"][:, 0])
    np.testing.assert_allclose(
        pos_embed[:, 1:].mean(), state_dict["pos_embed"][:, 1:].mean(), atol=0.05
    )
    assert logits(model, variables, np.zeros((1, 64, 64, 3), np.float32)).shape == (1, 10)
    # ConViT: no class slot, the whole embedding is the grid.
    _, convit = load_fixture("convit_tiny", image_size=48)
    assert convit["params"]["pos_embed"].shape == (1, 36, 32)


def test_pos_embed_of_another_grid_is_an_error_when_resizing_is_off():
    with pytest.raises(
        timm_weights.StateDictMismatchError,
        match=r"pos_embed \[1, 16, 32\] \(expected \[1, 36, 32\]\)",
    ):
        load_fixture("convit_tiny", image_size=48, pos_embed_resize=None)


def test_head_for_another_number_of_classes_is_reinitialised():
    _, zeros = load_fixture("convit_tiny", num_classes=5)
    assert zeros["params"]["head"]["kernel"].shape == (32, 5)
    assert not np.any(zeros["params"]["head"]["kernel"]) and not np.any(
        zeros["params"]["head"]["bias"]
    )
    # 'init' keeps the target's own (fresh) head and takes everything else from the file.
    model, original = load_fixture("resnet18_cifar")
    target = timm_weights.abstract_variables(model.clone(num_classes=5), 16)
    fresh = jax.tree.map(lambda x: np.full(x.shape, 0.5, np.float32), target)
    state_dict = timm_weights.read_state_dict(fixture_path("resnet18_cifar"))
    loaded = timm_weights.timm_to_prs(state_dict, fresh, head_init="init")
    assert_trees_equal(loaded["params"]["fc"], fresh["params"]["fc"])
    assert_trees_equal(loaded["params"]["layer4_1"], original["params"]["layer4_1"])
    assert_trees_equal(loaded["batch_stats"], original["batch_stats"])
    with pytest.raises(
        timm_weights.StateDictMismatchError, match=r"head\.weight \[10, 32\] \(expected \[5, 32\]\)"
    ):
        load_fixture("convit_tiny", num_classes=5, head_init=None)


# --- Wrong files --------------------------------------------------------------------------


def test_another_architecture_lists_the_mismatched_keys():
    with pytest.raises(timm_weights.StateDictMismatchError) as error:
        timm_weights.load_timm(fixture_path("deit_tiny"), "convit_tiny")
    message = str(error.value)
    assert "looks like a timm VisionTransformer (DeiT) state dict" in message
    assert "blocks.0.attn.qk.weight" in error.value.missing
    assert "blocks.0.attn.gating_param" in error.value.missing
    assert "blocks.0.attn.qkv.bias" in error.value.unexpected
    assert "blocks.{0-1}.attn.qkv.bias" in message and "blocks.{0-9}.attn.qk.weight" in message
    with pytest.raises(
        timm_weights.StateDictMismatchError, match="looks like a timm/torchvision ResNet"
    ) as error:
        timm_weights.load_timm(fixture_path("resnet18"), "deit_tiny")
    assert "conv1.weight" in error.value.unexpected and "cls_token" in error.value.missing


def test_missing_keys_are_listed():
    state_dict = timm_weights.read_state_dict(fixture_path("resnet18"))
    del state_dict["layer3.0.downsample.1.running_var"], state_dict["fc.bias"]
    with pytest.raises(timm_weights.StateDictMismatchError) as error:
        timm_weights.load_timm(state_dict, "resnet18")
    assert error.value.missing == ["fc.bias", "layer3.0.downsample.1.running_var"]
    assert "missing keys (2): fc.bias, layer3.0.downsample.1.running_var" in str(error.value)


def test_wrong_shapes_are_listed_with_both_shapes():
    # A ConViT-S file where the config says a ConViT-Ti of another width: every tensor is listed.
    tiny, _ = load_fixture("convit_tiny")
    with pytest.raises(timm_weights.StateDictMismatchError) as error:
        timm_weights.load_into(
            timm_weights.abstract_variables(tiny, 32), fixture_path("convit_small")
        )
    assert error.value.wrong_shapes["blocks.0.attn.gating_param"] == ((9,), (4,))
    assert error.value.wrong_shapes["blocks.2.attn.qkv.weight"] == ((108, 36), (96, 32))
    assert "blocks.0.attn.gating_param [9] (expected [4])" in str(error.value)
    assert not error.value.missing and not error.value.unexpected


# --- Files, the command line and training runs --------------------------------------------


def test_command_line_converts_to_prs_and_back(tmp_path):
    prs_file, timm_file = str(tmp_path / "prs.safetensors"), str(tmp_path / "timm.safetensors")
    convert.main(
        [
            "to-prs",
            fixture_path("deit_small"),
            prs_file,
            "--model",
            "deit_small",
            "--set",
            "num_heads=6",
        ]
    )
    variables, fields = timm_weights.load_variables(prs_file)
    assert (
        fields["name"] == "deit_small" and fields["num_heads"] == 6 and fields["hidden_size"] == 48
    )
    model = timm_weights.create_model_from_fields(fields)
    reference = np.load(FIXTURES / "deit_small.io.npz")
    assert (
        max_abs_difference(logits(model, variables, reference["images"]), reference["logits"])
        < PARITY_TOLERANCE
    )

    convert.main(["to-timm", prs_file, timm_file])
    original = timm_weights.read_state_dict(fixture_path("deit_small"))
    assert_trees_equal(timm_weights.read_state_dict(timm_file), original)


def test_load_into_takes_timm_and_prs_files_alike(tmp_path):
    model, variables = load_fixture("resnet18_cifar")
    prs_file = str(tmp_path / "resnet.safetensors")
    timm_weights.save_variables(prs_file, variables, timm_weights.model_fields(model, "resnet18"))
    target = timm_weights.abstract_variables(model, 16)
    assert_trees_equal(
        timm_weights.load_into(target, prs_file),
        timm_weights.load_into(target, fixture_path("resnet18_cifar")),
    )
    assert timm_weights.create_model_from_fields(timm_weights.load_variables(prs_file)[1]) == model


def test_export_from_a_training_workdir(tmp_path):
    import orbax.checkpoint as ocp

    from prs_jax.training import checkpointing

    _, variables = load_fixture("convit_tiny")
    state = {"step": np.int32(7), "params": variables["params"], "batch_stats": {}}
    # An unset field (a None placeholder of config_lib.model_config) is the named default.
    model_config = {"name": "convit_tiny", "patch_size": 8, "hidden_size": 32, "depth": None}
    with ocp.CheckpointManager(
        tmp_path / checkpointing.CHECKPOINT_DIR, item_names=("state", "data", "config")
    ) as manager:
        manager.save(
            7,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                config=ocp.args.JsonSave({"model": model_config}),
            ),
        )
    restored, fields = convert.restore_variables(str(tmp_path))
    assert fields == {"name": "convit_tiny", "patch_size": 8, "hidden_size": 32}
    assert_trees_equal(restored["params"], variables["params"])
    convert.main(["to-timm", str(tmp_path), str(tmp_path / "timm.safetensors")])
    exported = timm_weights.read_state_dict(str(tmp_path / "timm.safetensors"))
    np.testing.assert_array_equal(
        exported["blocks.1.attn.qk.weight"],
        timm_weights.read_state_dict(fixture_path("convit_tiny"))["blocks.1.attn.qk.weight"],
    )


def test_a_training_run_starts_from_converted_weights():
    from prs_jax.method import optimizer
    from prs_jax.training import config_lib

    if "init_from" not in config_lib.base_config():
        pytest.skip("config.init_from is not in the base config yet")
    config = config_lib.base_config()
    config.model.update(hidden_size=32, depth=3, num_gpsa_layers=2, patch_size=8)  # convit_tiny
    config.init_from.path = fixture_path("convit_tiny")  # 10 classes; the run has 100
    model = create_model(config, num_classes=100)
    tx = optimizer.create_optimizer(config.optimizer, lambda step: 1e-3)
    fresh = jax.tree.map(
        lambda x: jnp.ones(x.shape, x.dtype), timm_weights.abstract_variables(model, 32)
    )
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=fresh["params"],
        batch_stats={},
        opt_state=tx.init(fresh["params"]),
        rng=jax.random.key_data(jax.random.key(0)),
    )
    replicated = jax.sharding.NamedSharding(create_mesh(), jax.sharding.PartitionSpec())

    started = init_from_weights(state, config.init_from, tx, replicated)
    _, expected = load_fixture("convit_tiny", num_classes=100)  # the head zeroed for 100 classes
    assert_trees_equal(started.params, expected["params"])
    assert int(started.step) == 0
    assert jax.tree.structure(started.opt_state) == jax.tree.structure(state.opt_state)


def test_reading_safetensors_needs_no_torch():
    code = (
        "import sys; from prs_jax.models import timm_weights; "
        f"timm_weights.load_timm({fixture_path('resnet18_cifar')!r}, 'resnet18'); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


# --- Live comparison with timm (only where torch and timm import) ---------------------------


@pytest.fixture(scope="module")
def timm_reference():
    """The fixture script as a module (its timm builders), with timm imported; else skip."""
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("make_timm_fixtures", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    try:
        script.import_timm()
    except Exception as error:  # torch without timm, or a timm that does not import here
        pytest.skip(f"timm does not import: {error}")
    return script


def _torch_state_dict(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _live_parity(script, timm_model, prs_name, image_size, rebuild, **overrides):
    """Import: prs_jax logits vs timm's. Export: a fresh timm model, strictly loaded with the
    exported tensors, vs the original. Returns (import difference, export difference)."""
    import torch

    images = (
        np.random.default_rng(0).standard_normal((2, image_size, image_size, 3)).astype(np.float32)
    )
    expected = script.reference_logits(timm_model, images)
    model, variables = timm_weights.load_timm(_torch_state_dict(timm_model), prs_name, **overrides)
    import_difference = max_abs_difference(logits(model, variables, images), expected)

    other = rebuild()
    other.load_state_dict(
        {k: torch.from_numpy(v) for k, v in timm_weights.prs_to_timm(variables).items()},
        strict=True,
    )
    export_difference = max_abs_difference(script.reference_logits(other.eval(), images), expected)
    return import_difference, export_difference


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_live_reduced_models_match_timm_both_ways(timm_reference, name):
    spec = MANIFEST[name]
    build = functools.partial(timm_reference.build_timm_model, name)
    differences = _live_parity(
        timm_reference,
        build(seed=100),
        spec["prs_name"],
        spec["image_size"],
        lambda: build(seed=200),
        **spec["prs_overrides"],
    )
    print(f"{name}: import {differences[0]:.2e}, export {differences[1]:.2e}")
    assert max(differences) < PARITY_TOLERANCE


@pytest.mark.parametrize(
    "prs_name,timm_name,kwargs,image_size",
    [
        # The named sizes, at 64 px to stay quick; the reduced fixtures cover the other names.
        ("convit_tiny", "convit_tiny", dict(img_size=64, patch_size=16), 64),
        ("deit_tiny", "deit_tiny_patch16_224", dict(img_size=64), 64),  # heads from the name
        ("resnet50", "resnet50", {}, 64),
    ],
)
def test_live_full_size_models_match_timm_both_ways(
    timm_reference, prs_name, timm_name, kwargs, image_size
):
    timm = timm_reference.import_timm()

    def build(seed):
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
        timm_reference.randomize_(model, seed)
        return model.eval()

    differences = _live_parity(timm_reference, build(0), prs_name, image_size, lambda: build(1))
    print(f"{prs_name}: import {differences[0]:.2e}, export {differences[1]:.2e}")
    assert max(differences) < PARITY_TOLERANCE


def test_live_pth_files_read_like_safetensors(timm_reference, tmp_path):
    import torch

    model = timm_reference.build_timm_model("resnet18_cifar")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "checkpoint.pth")
    from_pth = timm_weights.read_state_dict(str(tmp_path / "checkpoint.pth"))
    assert_trees_equal(from_pth, _torch_state_dict(model))
