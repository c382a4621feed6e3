"""The fast path changes no result: the ViT/GPSA of models/vit.py and models/gpsa.py equals the
straightforward models/reference.py (same parameters) in outputs and gradients, at every conv
strength, in training (stochastic depth) and evaluation."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prs_jax.models import create_model
from prs_jax.models.gpsa import GatedPositionalSelfAttention
from prs_jax.models.reference import ReferenceGPSA, reference_of
from prs_jax.models.vit import gelu
from tests.support.jitted import jit_apply, jit_init

IMAGES = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))


def tiny(name, **overrides):
    fields = dict(patch_size=4, hidden_size=32, num_heads=4, depth=3, drop_path_rate=0.2)
    if name.startswith("convit"):
        fields["num_gpsa_layers"] = 2
    return create_model(name, num_classes=10, **{**fields, **overrides})


def random_params(model, seed=1):
    """Initial parameters plus noise, so that identity inits and zero biases hide nothing."""
    strength = jnp.ones(model.num_gpsa_layers)
    params = jit_init(model)(jax.random.key(seed), IMAGES, strength)["params"]
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    noisy = [leaf + 0.05 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, noisy)


@functools.partial(jax.jit, static_argnums=(0, 3))
def loss_and_grads(model, params, conv_strength, train):
    # Jitted: one compile per model and mode (and a persistent-cache hit on a rerun) instead of
    # the op-by-op dispatch of an eager backward pass, which took ~30 s on its first call.
    def loss(p):
        logits = model.apply(
            {"params": p}, IMAGES, conv_strength, train=train, rngs={"dropout": jax.random.key(7)}
        )
        return jnp.sum(jnp.sin(logits))  # a loss that weighs every logit differently

    return jax.value_and_grad(loss)(params)


def assert_trees_close(actual, expected, rtol):
    """Leafwise, relative to the largest entry of the whole tree (some grads are ~0, e.g.
    pos_proj's bias, which every softmax row cancels)."""
    scale = max(float(jnp.abs(leaf).max()) for leaf in jax.tree.leaves(expected))
    leaves = zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected))
    for (path, a), b in leaves:
        np.testing.assert_allclose(
            a, b, rtol=0, atol=rtol * scale, err_msg=jax.tree_util.keystr(path)
        )


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("strengths", [(0.0, 0.0), (1.0, 1.0), (0.3, 0.7), (1.0, 0.0)])
def test_convit_equals_the_straightforward_model(strengths, train):
    model = tiny("convit_tiny")
    params = random_params(model)
    s = jnp.asarray(strengths, jnp.float32)
    fast_loss, fast_grads = loss_and_grads(model, params, s, train)
    ref_loss, ref_grads = loss_and_grads(reference_of(model), params, s, train)
    np.testing.assert_allclose(fast_loss, ref_loss, rtol=1e-5)
    assert_trees_close(fast_grads, ref_grads, rtol=1e-5)


@pytest.mark.parametrize("train", [False, True])
def test_deit_with_qkv_bias_equals_the_straightforward_model(train):
    model = tiny("deit_tiny")
    params = random_params(model)
    fast_loss, fast_grads = loss_and_grads(model, params, jnp.zeros((0,)), train)
    ref_loss, ref_grads = loss_and_grads(reference_of(model), params, jnp.zeros((0,)), train)
    np.testing.assert_allclose(fast_loss, ref_loss, rtol=1e-5)
    assert_trees_close(fast_grads, ref_grads, rtol=1e-5)


def test_both_models_have_the_same_parameter_tree_and_initial_values():
    model = tiny("convit_tiny")
    fast = jit_init(model)(jax.random.key(3), IMAGES, jnp.ones(2))
    ref = jit_init(reference_of(model))(jax.random.key(3), IMAGES, jnp.ones(2))
    assert jax.tree.structure(fast) == jax.tree.structure(ref)
    jax.tree.map(np.testing.assert_array_equal, fast, ref)


def test_skipped_content_path_gives_exactly_zero_qk_gradient_at_conv_strength_one():
    layer, reference = GatedPositionalSelfAttention(4), ReferenceGPSA(4)
    x = jax.random.normal(jax.random.key(0), (2, 16, 32))
    params = random_params_of(layer, x)

    def grads(module, s):
        grad = jax.grad(lambda p: jnp.sum(jnp.sin(module.apply({"params": p}, x, s))))
        return jax.jit(grad)(params)

    fast, ref = grads(layer, jnp.float32(1.0)), grads(reference, jnp.float32(1.0))
    np.testing.assert_array_equal(fast["qk"]["kernel"], 0.0)
    np.testing.assert_array_equal(fast["gating_param"], 0.0)
    assert_trees_close(fast, ref, rtol=1e-5)


def random_params_of(layer, x):
    params = layer.init(jax.random.key(1), x, jnp.float32(0.0))["params"]
    return jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), params)


def test_bfloat16_compute_stays_close_to_float32():
    model = tiny("convit_tiny", drop_path_rate=0.0)
    params = random_params(model)
    s = jnp.asarray([1.0, 0.0])
    f32 = jit_apply(model)({"params": params}, IMAGES, s)
    bf16 = jit_apply(model.clone(dtype=jnp.bfloat16))({"params": params}, IMAGES, s)
    assert bf16.dtype == jnp.float32
    np.testing.assert_allclose(bf16, f32, atol=0.05 * float(jnp.abs(f32).max()))


def test_gelu_is_the_exact_gelu_in_value_and_gradient():
    x = jnp.linspace(-10.0, 10.0, 20001)
    np.testing.assert_allclose(gelu(x), nn.gelu(x, approximate=False), rtol=0, atol=2e-6)
    grad = jax.vmap(jax.grad(gelu))(x)
    expected = jax.vmap(jax.grad(lambda t: nn.gelu(t, approximate=False)))(x)
    np.testing.assert_allclose(grad, expected, rtol=0, atol=2e-6)
