"""GPSA: conv mode is a convolution, the PRS gate, and the attention it builds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prs_jax.models.gpsa import (
    GatedPositionalSelfAttention,
    dense_init,
    effective_gate,
    kernel_offsets,
    local_init,
    relative_indices,
)

GRID = 7
WIDTH = 36  # 9 heads x 4 dims


def init_layer(num_heads=9, locality_strength=1.0, seed=0):
    layer = GatedPositionalSelfAttention(num_heads, locality_strength=locality_strength)
    x = jax.random.normal(jax.random.key(seed), (2, GRID * GRID, WIDTH))
    params = layer.init(jax.random.key(seed + 1), x, jnp.float32(1.0))["params"]
    return layer, params, x


def randomise(params, names, seed=3):
    """Replace the named kernels with random values so identities cannot hide mistakes."""
    params = jax.tree.map(lambda a: a, params)
    for i, name in enumerate(names):
        shape = params[name]["kernel"].shape
        params[name]["kernel"] = 0.3 * jax.random.normal(jax.random.key(seed + i), shape)
    return params


def attention_weights(layer, params, x, s):
    _, state = layer.apply({"params": params}, x, jnp.float32(s), mutable=["intermediates"])
    return state["intermediates"]["attention_weights"][0]


def test_relative_indices_are_key_minus_query_offsets():
    r = relative_indices(3)
    # Query (row 0, col 0) = patch 0; key (row 2, col 1) = patch 7.
    np.testing.assert_array_equal(r[0, 7], [1, 2, 5])
    np.testing.assert_array_equal(r[7, 0], [-1, -2, 5])
    np.testing.assert_array_equal(r[4, 4], [0, 0, 0])


def conv_mode_layer(num_heads):
    """A layer at s = 1 with a large locality strength and random V, W_O and bias: (out, x,
    params, per-head taps W_V^h W_O^h [H, C, C]), out and x as [B, S, S, C] grids."""
    layer, params, x = init_layer(num_heads, locality_strength=50.0)
    params = randomise(params, ["v", "proj"])
    params["proj"]["bias"] = 0.1 * jnp.arange(WIDTH, dtype=jnp.float32)
    out = layer.apply({"params": params}, x, jnp.float32(1.0))
    w_v = params["v"]["kernel"].reshape(WIDTH, num_heads, -1)
    w_o = params["proj"]["kernel"].reshape(num_heads, -1, WIDTH)
    taps = jnp.einsum("chd,hde->hce", w_v, w_o)
    grid = lambda tokens: tokens.reshape(2, GRID, GRID, WIDTH)  # noqa: E731
    return grid(out), grid(x), params, taps


def conv3x3(grid, kernel, padding):
    return jax.lax.conv_general_dilated(
        grid, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def test_conv_mode_is_a_3x3_convolution_with_edge_replicate_padding():
    """s = 1, 9 heads, large alpha: out = conv(x, K) + b with K[offset_h] = W_V^h W_O^h, and at
    the border a head whose patch is missing takes the nearest existing one (edge replicate)."""
    out, x, params, taps = conv_mode_layer(9)
    kernel = jnp.zeros((3, 3, WIDTH, WIDTH))
    for head, (dx, dy) in enumerate(kernel_offsets(9).astype(int)):
        kernel = kernel.at[dy + 1, dx + 1].set(taps[head])
    bias = params["proj"]["bias"]
    edge_padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    replicated = conv3x3(edge_padded, kernel, "VALID") + bias
    zero_padded = conv3x3(x, kernel, "SAME") + bias

    error = float(jnp.abs(out - replicated).max())
    print(f"conv-mode max abs error, whole grid: {error:.2e}")
    assert error < 1e-4
    interior = (slice(None), slice(1, -1), slice(1, -1))
    assert float(jnp.abs(out - zero_padded)[interior].max()) < 1e-4
    assert float(jnp.abs(out - zero_padded)[:, 0, 0].min()) > 1e-2  # the corner is not zero-padded


def test_conv_mode_heads_of_convit_ti_average_the_2x2_neighbours_that_exist():
    """s = 1, 4 heads (k = 2, offsets between patches), large alpha: head h's output at token i
    is the mean of the value-projected patches of its 2 x 2 square that exist, at the border too
    (a corner head keeps 1 of 4 patches with weight 1, where zero padding would give 1/4)."""
    out, x, params, taps = conv_mode_layer(4)
    bias = np.asarray(params["proj"]["bias"])
    renormalised, zero_padded = np.zeros((2,) + out.shape) + bias
    for head, (dx, dy) in enumerate(kernel_offsets(4)):
        square = [(int(dy + a), int(dx + b)) for a in (-0.5, 0.5) for b in (-0.5, 0.5)]
        for row, col in np.ndindex(GRID, GRID):
            present = [
                np.asarray(x[:, row + r, col + c])
                for r, c in square
                if 0 <= row + r < GRID and 0 <= col + c < GRID
            ]
            renormalised[:, row, col] += np.mean(present, axis=0) @ np.asarray(taps[head])
            zero_padded[:, row, col] += np.sum(present, axis=0) / 4 @ np.asarray(taps[head])
    np.testing.assert_allclose(out, renormalised, atol=1e-4)
    interior = (slice(None), slice(1, -1), slice(1, -1))
    np.testing.assert_allclose(out[interior], zero_padded[interior], atol=1e-4)
    assert np.abs(out - zero_padded)[:, 0, 0].min() > 1e-2


def test_default_locality_strength_gives_each_head_a_broad_gaussian():
    """alpha = 1: per axis the weights are exp(-(d - delta)^2) normalised over the grid, so a
    9-head layer's head keeps 1 / (sum_d exp(-d^2))^2 = 32% on its own patch (interior query)."""
    layer, params, x = init_layer(9, locality_strength=1.0)
    positional = attention_weights(layer, params, x, 1.0)[0]
    query = 3 * GRID + 3
    centre_head = 4  # offset (0, 0)
    per_axis = np.exp(-(np.arange(-3.0, 4.0) ** 2))
    expected = 1.0 / per_axis.sum() ** 2
    assert float(positional[centre_head, query, query]) == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.318, abs=1e-3)


def test_conv_mode_ignores_qk_and_gate_gradient_is_zero():
    layer, params, x = init_layer()
    other_qk = randomise(params, ["qk"], seed=11)

    def out(p, s):
        return layer.apply({"params": p}, x, jnp.float32(s))

    np.testing.assert_array_equal(out(params, 1.0), out(other_qk, 1.0))
    assert jnp.abs(out(params, 0.5) - out(other_qk, 0.5)).max() > 1e-3

    def loss(gating_param, s):
        p = dict(params, gating_param=gating_param)
        return jnp.sum(out(p, s) ** 2)

    grad_conv = jax.grad(loss)(params["gating_param"], 1.0)
    grad_mixed = jax.grad(loss)(params["gating_param"], 0.5)
    np.testing.assert_array_equal(grad_conv, np.zeros(9))
    assert jnp.abs(grad_mixed).min() > 0


def test_output_is_continuous_in_conv_strength():
    layer, params, x = init_layer()
    params = randomise(params, ["qk"])
    outs = [
        layer.apply({"params": params}, x, jnp.float32(s)) for s in (1.0, 1.0 - 1e-4, 1e-4, 0.0)
    ]
    assert jnp.abs(outs[0] - outs[1]).max() < 1e-3
    assert jnp.abs(outs[2] - outs[3]).max() < 1e-3
    assert jnp.abs(outs[0] - outs[3]).max() > 1e-2  # the two ends do differ


def test_effective_gate_interpolates_from_one_to_learned_gate():
    lam = jnp.array([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(effective_gate(lam, 1.0), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(effective_gate(lam, 0.0), jax.nn.sigmoid(lam), rtol=1e-6)
    np.testing.assert_allclose(
        effective_gate(lam, 0.25), 0.25 + 0.75 * jax.nn.sigmoid(lam), rtol=1e-6
    )


@pytest.mark.parametrize("s", [0.0, 0.3, 1.0])
def test_attention_rows_sum_to_one(s):
    layer, params, x = init_layer()
    params = randomise(params, ["qk"])
    weights = attention_weights(layer, params, x, s)
    assert weights.shape == (2, 9, GRID * GRID, GRID * GRID)
    assert float(weights.min()) >= 0.0
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("s", [0.0, 0.6])
def test_fast_path_equals_explicit_attention_matrix(s):
    """The output (content and positional paths summed) equals proj(A V) with the full A."""
    layer, params, x = init_layer()
    params = randomise(params, ["qk", "v"])
    weights = attention_weights(layer, params, x, s)
    v = (x @ params["v"]["kernel"]).reshape(2, GRID * GRID, 9, WIDTH // 9)
    mixed = jnp.einsum("bhnm,bmhd->bnhd", weights, v).reshape(2, GRID * GRID, WIDTH)
    expected = mixed @ params["proj"]["kernel"] + params["proj"]["bias"]
    out = layer.apply({"params": params}, x, jnp.float32(s))
    np.testing.assert_allclose(out, expected, atol=1e-5)


def convit_local_offset(head, num_heads):
    """ConViT's GPSA.local_init: head h1 + k h2 gets dy weight 2 (h1 - c), dx weight 2 (h2 - c)."""
    kernel_size = int(num_heads**0.5)
    centre = (kernel_size - 1) / 2
    h1, h2 = head % kernel_size, head // kernel_size
    return h2 - centre, h1 - centre  # (dx, dy)


def test_local_init_points_each_head_at_convits_offset_for_that_head():
    layer, params, x = init_layer(locality_strength=1.0)
    positional = attention_weights(layer, params, x, 1.0)[0]  # s = 1: A is the positional map
    query_row, query_col = 3, 3
    query = query_row * GRID + query_col
    for head in range(9):
        dx, dy = convit_local_offset(head, 9)
        peak = int(jnp.argmax(positional[head, query]))
        assert divmod(peak, GRID) == (query_row + dy, query_col + dx), f"head {head}"
    # Head 1 looks one patch down (dy = 0), not right: ConViT's column-by-column order.
    assert convit_local_offset(1, 9) == (-1, 0)
    # Local init also makes V the identity (ConViT).
    np.testing.assert_array_equal(params["v"]["kernel"], np.eye(WIDTH))


@pytest.mark.parametrize("num_heads", [4, 6, 9, 16])
def test_local_init_kernel_is_convits_head_for_head(num_heads):
    """pos_proj columns alpha (2 dx_h, 2 dy_h, -1) in ConViT's head order (even k too, where
    argmax ties); heads beyond k*k keep the random init, scaled by alpha as in ConViT."""
    alpha, key = 3.0, jax.random.key(5)
    kernel = np.asarray(local_init(alpha)(key, (3, num_heads)))
    kernel_size = int(num_heads**0.5)
    for head in range(kernel_size**2):
        dx, dy = convit_local_offset(head, num_heads)
        np.testing.assert_array_equal(kernel[:, head], alpha * np.array([2 * dx, 2 * dy, -1.0]))
    extra = slice(kernel_size**2, None)
    random_init = dense_init(key, (3, num_heads))
    np.testing.assert_array_equal(kernel[:, extra], alpha * random_init[:, extra])


def test_rejects_tokens_that_are_not_a_square_grid():
    layer = GatedPositionalSelfAttention(4)
    with pytest.raises(ValueError, match="square grid"):
        layer.init(jax.random.key(0), jnp.zeros((1, 50, 16)), jnp.float32(1.0))
