"""The optimizer at a PRS layer switch: a GPSA layer's content path rests while the layer is a
convolution and starts at its switch as a fresh AdamW would; everything else is optax.adamw.

The tree below has the parameter names of two GPSA blocks and a head. Layer 0 switches at step
30, layer 1 at step 10 (hard switches, 10 steps per epoch). As in the model, the content path
(qk, gating_param) of a layer gets exactly zero gradient while its conv strength is 1.
"""

import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from prs_jax.method import optimizer, schedule
from prs_jax.training import config_lib
from prs_jax.training.state import create_model

SWITCH_STEPS = (30, 10)  # per GPSA layer
LEARNING_RATE = optax.linear_schedule(1e-3, 1e-4, 200)


def gpsa_params(num_layers=2):
    rng = np.random.default_rng(0)
    shapes = {
        "qk": {"kernel": (4, 8)},
        "gating_param": (2,),
        "v": {"kernel": (4, 4)},
        "pos_proj": {"kernel": (3, 2), "bias": (2,)},
        "proj": {"kernel": (4, 4)},
    }
    tree = {f"blocks_{l}": {"attn": shapes} for l in range(num_layers)}
    tree["head"] = {"kernel": (4, 3), "bias": (3,)}
    return jax.tree.map(
        lambda shape: jnp.asarray(rng.normal(size=shape), jnp.float32),
        tree,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def conv_strength_fn(num_layers=2):
    epochs = ml_collections.ConfigDict(
        dict(
            first_layer_switch_epoch=SWITCH_STEPS[0] / 10,
            last_layer_switch_epoch=SWITCH_STEPS[1] / 10,
            ramp_epochs=0.0,
        )
    )
    return schedule.make_conv_strength_fn(num_layers, 10, epochs)


def gradients(params, step, conv_strength):
    """Random gradients, zero on the content path of each layer that is a convolution."""
    layers = optimizer.content_path_layers(params)
    key = jax.random.key(step)

    def grad(path, p, layer):
        leaf_key = jax.random.fold_in(key, zlib.crc32(jax.tree_util.keystr(path).encode()))
        g = jax.random.normal(leaf_key, p.shape)
        return g if layer < 0 else jnp.where(conv_strength[layer] < 1, g, 0.0)

    return jax.tree_util.tree_map_with_path(grad, params, layers)


def create(pause=True, weight_decay=0.05):
    config = config_lib.base_config().optimizer
    config.update(weight_decay=weight_decay, pause_content_path_while_conv=pause)
    return optimizer.create_optimizer(config, LEARNING_RATE)


def adamw(learning_rate=LEARNING_RATE, weight_decay=0.05):
    return optax.adamw(
        learning_rate,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=weight_decay,
        mask=optimizer.weight_decay_mask,
    )


def run(tx, params, num_steps, strength_fn=None, first_step=0, extra=True):
    """(updates per step, final params) of `num_steps` jitted steps on `gradients`."""
    strength_fn = strength_fn or conv_strength_fn()

    @jax.jit
    def step(params, state, t):
        s = strength_fn(t)
        kwargs = {"conv_strength": s} if extra else {}
        updates, state = tx.update(gradients(params, t, s), state, params, **kwargs)
        return optax.apply_updates(params, updates), state, updates

    state, history = tx.init(params), []
    for t in range(first_step, first_step + num_steps):
        params, state, updates = step(params, state, jnp.int32(t))
        history.append(updates)
    return history, params, state, step


def content(tree, layer):
    attn = tree[f"blocks_{layer}"]["attn"]
    return {"qk": attn["qk"], "gating_param": attn["gating_param"]}


def assert_bitwise_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_content_path_is_the_qk_projection_and_the_gate_of_each_gpsa_layer():
    layers = optimizer.content_path_layers(gpsa_params())
    assert layers["blocks_1"]["attn"]["qk"]["kernel"] == 1
    assert layers["blocks_0"]["attn"]["gating_param"] == 0
    for name in ("v", "pos_proj", "proj"):
        assert set(jax.tree.leaves(layers["blocks_0"]["attn"][name])) == {-1}
    assert set(jax.tree.leaves(layers["head"])) == {-1}


def test_at_conv_strength_one_exactly_the_content_path_gets_zero_gradient():
    config = config_lib.base_config()
    config.model.update(patch_size=4, hidden_size=16, num_heads=4, depth=3, num_gpsa_layers=2)
    model = create_model(config, num_classes=10)
    images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    # Jitted: an eager init and backward pass dispatch op by op (~20 s here).
    init = jax.jit(lambda key: model.init(key, images, jnp.ones(2), train=False)["params"])
    params = init(jax.random.key(0))

    def loss(params):
        return jnp.sum(model.apply({"params": params}, images, jnp.array([1.0, 0.0])) ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    zero = jax.tree.map(lambda g: bool((g == 0).all()), grads)
    layers = optimizer.content_path_layers(params)
    flat = {
        jax.tree_util.keystr(k): (z, l)
        for (k, z), l in zip(jax.tree_util.tree_leaves_with_path(zero), jax.tree.leaves(layers))
    }
    # Layer 0 is a convolution: its qk and gate rest; layer 1 (s = 0) trains everything.
    assert sorted(k for k, (z, _) in flat.items() if z) == [
        "['blocks_0']['attn']['gating_param']",
        "['blocks_0']['attn']['qk']['kernel']",
    ]
    assert sorted(k for k, (_, l) in flat.items() if l >= 0) == [
        "['blocks_0']['attn']['gating_param']",
        "['blocks_0']['attn']['qk']['kernel']",
        "['blocks_1']['attn']['gating_param']",
        "['blocks_1']['attn']['qk']['kernel']",
    ]


def test_the_content_path_is_exactly_unchanged_in_the_conv_phase_with_weight_decay_on():
    params = gpsa_params()
    _, after, state, _ = run(create(), params, SWITCH_STEPS[0])  # up to layer 0's switch
    # The qk kernel is decayed (0.05) and yet it is bit for bit where it started.
    assert_bitwise_equal(content(after, 0), content(params, 0))
    assert not np.array_equal(
        after["blocks_0"]["attn"]["v"]["kernel"], params["blocks_0"]["attn"]["v"]["kernel"]
    )
    assert not np.array_equal(content(after, 1)["qk"]["kernel"], content(params, 1)["qk"]["kernel"])
    adam_state = state[0]
    np.testing.assert_array_equal(adam_state.content_count, [0, 20])  # steps trained per layer
    zeros = jax.tree.map(jnp.zeros_like, content(params, 0))
    assert_bitwise_equal(content(adam_state.adam.mu, 0), zeros)


def test_plain_adamw_decays_the_resting_content_path():
    """Why the pause matters: with the old behaviour the qk kernel shrinks in the conv phase."""
    params = gpsa_params()
    _, after, _, _ = run(create(pause=False), params, SWITCH_STEPS[0])
    shrink = 1 - np.linalg.norm(content(after, 0)["qk"]["kernel"]) / np.linalg.norm(
        content(params, 0)["qk"]["kernel"]
    )
    # prod over 30 steps of (1 - lr_t x 0.05): about 1.3e-3.
    expected = 1 - np.prod([1 - float(LEARNING_RATE(t)) * 0.05 for t in range(30)])
    np.testing.assert_allclose(shrink, expected, rtol=1e-3)


@pytest.mark.parametrize("layer", [0, 1])
def test_updates_after_a_switch_equal_a_fresh_adamw_started_at_the_switch(layer):
    params = gpsa_params()
    switch = SWITCH_STEPS[layer]
    history, _, _, _ = run(create(), params, switch + 20)
    # A fresh AdamW on this layer's content path alone, from the switch, on the same gradients;
    # the learning rate stays on the global step.
    fresh = adamw(lambda t: LEARNING_RATE(t + switch))
    fresh_params = content(params, layer)  # the pause left them as initialised
    fresh_state = fresh.init(fresh_params)
    strength_fn = conv_strength_fn()
    for t in range(switch, switch + 20):
        grads = content(gradients(params, t, strength_fn(t)), layer)  # they depend on shapes
        expected, fresh_state = fresh.update(grads, fresh_state, fresh_params)
        fresh_params = optax.apply_updates(fresh_params, expected)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-10),
            content(history[t], layer),
            expected,
        )


def test_old_behaviour_steps_about_3x_then_6x_too_far_after_the_switch():
    """The issue's numbers, with the pause off: Adam's global bias correction after a long conv
    phase makes the first steps (1 - b1^k) / sqrt(1 - b2^k) times a fresh Adam's."""
    params = {"blocks_0": {"attn": {"qk": {"kernel": jnp.ones((3,))}}}}
    conv_steps = 20_000
    strength = lambda t: jnp.where(t < conv_steps, 1.0, 0.0)[None]  # noqa: E731
    ratios = {}
    for pause in (False, True):
        tx = create(pause=pause, weight_decay=0.0)
        state = tx.init(params)
        adam_state = state[0]
        # Zero gradients for the conv phase change only the counts, so set them directly.
        count = jnp.int32(conv_steps)
        state = (
            adam_state._replace(
                adam=adam_state.adam._replace(count=count),
                content_count=jnp.where(pause, 0, count)[None],
            ),
            state[1]._replace(count=count),
        )
        step = jax.jit(lambda g, s, s_t, tx=tx: tx.update(g, s, params, conv_strength=s_t))
        sizes = []
        for t in range(conv_steps, conv_steps + 20):
            grads = {"blocks_0": {"attn": {"qk": {"kernel": jnp.full((3,), 0.5)}}}}
            updates, state = step(grads, state, strength(t))
            sizes.append(
                float(jnp.abs(updates["blocks_0"]["attn"]["qk"]["kernel"][0]) / LEARNING_RATE(t))
            )
        ratios[pause] = np.array(sizes)
    # A fresh Adam: |m / sqrt(v)| = 1, to float32's precision of the bias correction: 1 - 0.999^k
    # cancels (0.002 at k = 2), so one rounding of 0.999^k is ~5e-5 of it, which varies with how
    # XLA lowers the power (it did with the LLVM optimisation level).
    np.testing.assert_allclose(ratios[True], 1.0, rtol=1e-4)
    k = np.arange(1, 21)
    np.testing.assert_allclose(ratios[False], (1 - 0.9**k) / np.sqrt(1 - 0.999**k), rtol=1e-4)
    np.testing.assert_allclose(ratios[False][[0, 19]], [3.16, 6.24], rtol=2e-3)


def test_old_behaviour_is_optax_adamw_bit_for_bit_across_switches():
    params = gpsa_params()
    history, _, _, _ = run(create(pause=False), params, 40)
    expected, _, _, _ = run(adamw(), params, 40, extra=False)
    assert_bitwise_equal(history, expected)


@pytest.mark.parametrize("num_layers", [2, 0])  # ConViT (s = 0 throughout); no GPSA (DeiT)
def test_self_attention_throughout_is_optax_adamw_bit_for_bit(num_layers):
    params = gpsa_params()
    if num_layers == 0:  # a DeiT-like tree: no content path
        qkv = {"kernel": params["blocks_0"]["attn"]["qk"]["kernel"]}
        params = {"blocks_0": {"attn": {"qkv": qkv}}, "head": params["head"]}
    convit = lambda t: jnp.zeros((num_layers,))  # noqa: E731
    history, _, _, _ = run(create(), params, 25, convit)
    expected, _, _, _ = run(adamw(), params, 25, convit, extra=False)
    assert_bitwise_equal(history, expected)


def test_one_compilation_serves_steps_across_every_switch():
    _, _, _, step = run(create(), gpsa_params(), 40)  # both switches (steps 10 and 30)
    assert step._cache_size() == 1


def test_an_update_without_the_conv_strength_is_an_error():
    tx = create()
    params = gpsa_params()
    with pytest.raises(ValueError, match="pass the step's conv_strength"):
        tx.update(params, tx.init(params), params)


@pytest.mark.parametrize("num_layers", [2, 0])
def test_the_optimizer_state_checkpoints_with_and_without_gpsa_layers(num_layers, tmp_path):
    import orbax.checkpoint as ocp

    # orbax refuses zero-size arrays: a DeiT or ResNet state must not hold one (it did: the
    # per-layer counts of a model without GPSA layers were int32[0]).
    params = gpsa_params(num_layers) if num_layers else {"head": gpsa_params()["head"]}
    state = create().init(params)
    assert all(leaf.size > 0 for leaf in jax.tree.leaves(state))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", state)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "state", state)
    assert_bitwise_equal(restored, state)
