"""The train step: one compilation across every layer switch, exact data parallelism, the
weight-decay mask, and the per-layer metrics."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from prs_jax.method import optimizer, schedule
from prs_jax.training import config_lib
from prs_jax.training.state import create_mesh, create_model, initial_state
from prs_jax.training.steps import build_run_functions, make_train_step

NUM_CLASSES = 10
IMAGE_SIZE = 16
BATCH = 8


def tiny_config(**schedule_epochs):
    config = config_lib.base_config()
    config.model.update(
        name="convit_tiny",
        patch_size=4,
        hidden_size=16,
        num_heads=4,
        depth=3,
        num_gpsa_layers=2,
        drop_path_rate=0.1,
    )
    config.data.image_size = IMAGE_SIZE
    config.num_epochs = 4.0
    config.optimizer.warmup_epochs = 1.0
    config.optimizer.update(learning_rate=1e-3, learning_rate_per_512=0.0)
    config.schedule.update(schedule_epochs)
    return config


def build(config, steps_per_epoch=5, devices=None):
    """Model, jitted step and initial state on a mesh of `devices`."""
    mesh = jax.make_mesh(
        (len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    steps = schedule.training_steps(
        steps_per_epoch * BATCH, BATCH, config.num_epochs, config.optimizer.warmup_epochs
    )
    model = create_model(config, NUM_CLASSES)
    conv_strength_fn = schedule.make_conv_strength_fn(
        model.num_gpsa_layers, steps.steps_per_epoch, config.schedule
    )
    lr = schedule.learning_rate_schedule(config.optimizer.learning_rate, steps)
    tx = optimizer.create_optimizer(config.optimizer, lr)
    step_fn = jax.jit(
        make_train_step(model, tx, conv_strength_fn, lr, config, NUM_CLASSES),
        in_shardings=(replicated, sharded),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )
    state = jax.jit(
        functools.partial(initial_state, model, tx, IMAGE_SIZE, 0), out_shardings=replicated
    )()
    return step_fn, state, sharded, steps


def batch(index, sharding):
    rng = np.random.default_rng(index)
    return {
        "image": jax.device_put(
            rng.normal(size=(BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32), sharding
        ),
        "label": jax.device_put(rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32), sharding),
    }


def test_one_compilation_serves_a_run_across_every_layer_switch():
    # Layer 0 switches at epoch 2, layer 1 at epoch 1, each over a half-epoch ramp.
    config = tiny_config(first_layer_switch_epoch=2.0, last_layer_switch_epoch=1.0, ramp_epochs=0.5)
    step_fn, state, sharding, steps = build(config, devices=jax.devices()[:1])
    strengths = []
    for index in range(steps.total_steps):
        state, metrics = step_fn(state, batch(index, sharding))
        strengths.append(np.asarray(metrics["conv_strength"]))
    strengths = np.stack(strengths)
    # The run really crossed every switch: both layers went from 1 to 0.
    np.testing.assert_array_equal(strengths[0], [1.0, 1.0])
    np.testing.assert_array_equal(strengths[-1], [0.0, 0.0])
    assert step_fn._cache_size() == 1


def test_the_train_step_rests_a_conv_layers_content_path_until_its_switch():
    # Layer 0 switches at epoch 2 (step 10), layer 1 at epoch 1 (step 5); hard switches.
    config = tiny_config(first_layer_switch_epoch=2.0, last_layer_switch_epoch=1.0)
    step_fn, state, sharding, _ = build(config, devices=jax.devices()[:1])
    initial = jax.device_get(state.params)
    for index in range(10):
        state, _ = step_fn(state, batch(index, sharding))
    params = jax.device_get(state.params)
    layer_0, layer_1 = (params[f"blocks_{l}"]["attn"] for l in (0, 1))
    start_0, start_1 = (initial[f"blocks_{l}"]["attn"] for l in (0, 1))
    # Bit for bit, weight decay included; the convolution's own weights trained meanwhile.
    np.testing.assert_array_equal(layer_0["qk"]["kernel"], start_0["qk"]["kernel"])
    np.testing.assert_array_equal(layer_0["gating_param"], start_0["gating_param"])
    assert not np.array_equal(layer_0["v"]["kernel"], start_0["v"]["kernel"])
    assert not np.array_equal(layer_1["qk"]["kernel"], start_1["qk"]["kernel"])
    np.testing.assert_array_equal(state.opt_state[0].content_count, [0, 5])
    state, _ = step_fn(state, batch(10, sharding))  # layer 0's first step as self-attention
    assert not np.array_equal(
        state.params["blocks_0"]["attn"]["qk"]["kernel"], start_0["qk"]["kernel"]
    )
    np.testing.assert_array_equal(state.opt_state[0].content_count, [1, 6])


@pytest.mark.slow  # a long end-to-end run; -m 'not slow' skips it
def test_data_parallel_on_two_devices_equals_one_device():
    assert jax.device_count() >= 2, "conftest fakes two CPU devices"
    config = tiny_config(first_layer_switch_epoch=0.4, last_layer_switch_epoch=0.2)
    results = []
    for devices in (jax.devices()[:1], jax.devices()[:2]):
        step_fn, state, sharding, _ = build(config, devices=devices)
        for index in range(4):
            state, _ = step_fn(state, batch(index, sharding))
        results.append(jax.device_get(state.params))
    one, two = results
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), one, two)
    # The steps did move the parameters, so the comparison is not between two initial states.
    _, initial, _, _ = build(config, devices=jax.devices()[:1])
    moved = jax.tree.map(
        lambda a, b: float(np.abs(a - b).max()), one, jax.device_get(initial.params)
    )
    assert max(jax.tree.leaves(moved)) > 1e-4


def test_metrics_report_conv_strength_and_effective_gate_per_layer():
    config = tiny_config(first_layer_switch_epoch=100.0, last_layer_switch_epoch=0.0)
    step_fn, state, sharding, _ = build(config, devices=jax.devices()[:1])
    _, metrics = step_fn(state, batch(0, sharding))
    # Layer 0 is still a convolution (gate 1); layer 1 switched at epoch 0 (gate sigmoid(1)).
    np.testing.assert_array_equal(metrics["conv_strength"], [1.0, 0.0])
    np.testing.assert_allclose(metrics["gate"], [1.0, jax.nn.sigmoid(1.0)], rtol=1e-3)
    for name in ("loss", "accuracy", "learning_rate", "grad_norm", "param_norm"):
        assert np.isfinite(metrics[name]) and np.ndim(metrics[name]) == 0, name


def test_weight_decay_mask_covers_exactly_the_kernels():
    config = tiny_config()
    _, state, _, _ = build(config, devices=jax.devices()[:1])
    mask = optimizer.weight_decay_mask(state.params)
    flat = {
        "/".join(k.key for k in path): value
        for path, value in jax.tree_util.tree_leaves_with_path(mask)
    }
    decayed = sorted(name for name, value in flat.items() if value)
    not_decayed = sorted(name for name, value in flat.items() if not value)
    assert "patch_embed/kernel" in decayed
    assert "blocks_0/attn/qk/kernel" in decayed and "blocks_0/attn/pos_proj/kernel" in decayed
    assert "blocks_2/attn/qkv/kernel" in decayed and "head/kernel" in decayed
    assert all(name.endswith("/kernel") for name in decayed)
    for name in (
        "pos_embed",
        "cls_token",
        "blocks_0/attn/gating_param",
        "blocks_0/norm1/scale",
        "blocks_0/norm1/bias",
        "norm/scale",
        "head/bias",
        "blocks_0/attn/proj/bias",
        "blocks_0/attn/pos_proj/bias",
        "patch_embed/bias",
    ):
        assert name in not_decayed, name
    assert not any(name.endswith("/kernel") for name in not_decayed)


def test_weight_decay_is_applied_only_through_the_mask():
    """With zero gradients, AdamW decays kernels and leaves every other leaf untouched."""
    config = tiny_config()
    config.optimizer.grad_clip_norm = 0.0
    _, state, _, _ = build(config, devices=jax.devices()[:1])
    tx = optimizer.create_optimizer(config.optimizer, 0.1)
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    strength = jnp.zeros(2)
    # Jitted: eager, the masked AdamW chain dispatches op by op over every leaf (~20 s here).
    update = jax.jit(lambda g, p: tx.update(g, tx.init(p), p, conv_strength=strength)[0])
    updates = update(zeros, state.params)
    expected = jax.tree.map(
        lambda p, decay: -0.1 * config.optimizer.weight_decay * p if decay else jnp.zeros_like(p),
        state.params,
        optimizer.weight_decay_mask(state.params),
    )
    jax.tree.map(
        lambda u, e: np.testing.assert_allclose(u, e, rtol=1e-6, atol=1e-9), updates, expected
    )


@pytest.mark.parametrize("name", ["resnet18"])
def test_resnet_train_step_updates_batch_stats(name):
    config = tiny_config()
    # Width 8: the step and its batch stats are those of any width, the compile a fraction.
    config.model = ml_collections.ConfigDict({"name": name, "stem": "cifar", "width": 8})
    step_fn, state, sharding, _ = build(config, devices=jax.devices()[:1])
    before = jax.device_get(state.batch_stats)
    state, metrics = step_fn(state, batch(0, sharding))
    after = jax.device_get(state.batch_stats)
    changed = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), before, after)
    assert max(jax.tree.leaves(changed)) > 0
    assert metrics["conv_strength"].shape == (0,)


def test_run_functions_warm_up_from_deits_warmup_lr_to_the_rate_scaled_by_the_batch_size():
    config = tiny_config()
    config.optimizer.update(learning_rate=0.0, learning_rate_per_512=5e-4)
    config.batch_size = 256  # as --config.batch_size=256 would
    steps = schedule.training_steps(256 * 5, 256, config.num_epochs, config.optimizer.warmup_epochs)
    model = create_model(config, NUM_CLASSES)
    run = build_run_functions(config, model, NUM_CLASSES, steps, create_mesh())
    assert run.learning_rate_note == "learning rate 2.5e-4 = 5e-4 x 256 / 512"
    # 5 warmup steps from 1e-6, then the cosine of the global step (20 in all) to 1e-5.
    rates = [float(run.learning_rate_fn(t)) for t in (0, 4, 5, 20)]
    cosine_5 = 1e-5 + (2.5e-4 - 1e-5) * 0.5 * (1 + np.cos(np.pi * 5 / 20))
    np.testing.assert_allclose(
        rates, [1e-6, 1e-6 + 4 * (2.5e-4 - 1e-6) / 5, cosine_5, 1e-5], rtol=1e-5
    )
