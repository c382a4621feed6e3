"""Gated positional self-attention (GPSA): a self-attention layer that can be a convolution.

Semantics follow ConViT (d'Ascoli et al., 2021, Sec. 3): per head h,

    A_h = (1 - g_h) softmax(Q_h K_h^T / sqrt(d)) + g_h softmax(v_pos_h . r_ij),

with r_ij = (dx, dy, dx^2 + dy^2) the offset from query patch i to key patch j on the S x S grid.
PRS (Lee et al., 2022) adds the layer's conv strength s in [0, 1]:

    g_h = s + (1 - s) sigmoid(lambda_h).

s = 0 is a ConViT layer with a learned gate. s = 1 is pure positional attention, which does not
depend on the input: token i's output is b_O + sum_h sum_j P_h[i, j] x_j W_V^h W_O^h, where
P_h[i, :] is the softmax of v_pos_h . r_ij + b_h over the keys that exist (the S x S patches; no
padding). The logit splits into a column term and a row term, so P_h is a softmax over columns
times one over rows. What that computes:

- Away from the border (where a head's weight beyond the grid is negligible) the softmax
  normaliser is the same for every query: a convolution with kernel K(d) = sum_h P_h(d) W_V^h W_O^h
  over the whole grid. After local init P_h(d) ~ exp(-alpha |d - delta_h|^2), a Gaussian of std
  1/sqrt(2 alpha) patches per axis around head h's offset delta_h (`kernel_offsets`). At ConViT's
  default alpha = 1 it is broad: a head of a 9-head layer puts 32% of its weight on its own
  offset; each of ConViT-Ti's 4 heads puts 77% on its 2 x 2 square.
- Near the border the softmax renormalises over the tokens that exist: the weight a head would
  give to missing tokens goes to the others in proportion, not to zero padding.
- As alpha grows, each head attends equally to the existing patches nearest to i + delta_h. With
  k = floor(sqrt(H)) odd (9 heads: 3 x 3) that is one patch: a k x k convolution with tap
  W_V^h W_O^h at delta_h and edge-replicate padding. With k even, delta_h lies between patches:
  each of ConViT-Ti's 4 heads averages a 2 x 2 neighbourhood (at the border, the part of it that
  exists), a 3 x 3 convolution, also edge-replicate padded, whose tap at d is a quarter of the sum
  of W_V^h W_O^h over the heads whose square holds d. Heads beyond k*k keep random positional
  weights.

Moving s from 1 to 0 reparameterizes the layer into self-attention without copying or
re-initialising anything.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any


def timm_trunc_normal(stddev: float, bound: float = 2.0) -> nn.initializers.Initializer:
    """timm's `trunc_normal_(std=stddev)`: N(0, stddev^2) cut at +-`bound` in absolute value.

    timm's a=-2, b=2 are absolute, so at std 0.02 the cut is at 100 sigma and the draw is a plain
    normal of std 0.02; flax's truncated_normal(0.02) cuts at 2 sigma (std 0.0176). The clip
    states the bound and never binds (a float32 normal sample stays within 6 sigma); a normal
    sample, not jax's inverse-CDF truncated_normal, whose erf(-100 / sqrt 2) = -1 endpoint
    yields -bound for one draw in 2^23.
    """
    if bound < 6.0 * stddev:
        raise ValueError(f"bound {bound} is within 6 sigma of std {stddev}: clipping would bind")

    def init(key: Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> Array:
        return jnp.clip(stddev * jax.random.normal(key, shape, dtype), -bound, bound)

    return init


# timm's ViT (0.3.x, the DeiT code) and ConViT init every Linear weight, the position embedding
# and the class token with trunc_normal_(std=.02).
dense_init = timm_trunc_normal(0.02)


@functools.cache
def relative_indices(grid_size: int) -> np.ndarray:
    """Offsets between patches on a row-major S x S grid: f32[S*S, S*S, 3] of (dx, dy, dx^2 + dy^2).

    Entry [i, j] describes key patch j as seen from query patch i: dx = col_j - col_i and
    dy = row_j - row_i. A NumPy constant, computed once per grid size.
    """
    rows, cols = np.divmod(np.arange(grid_size * grid_size), grid_size)
    dx = cols[None, :] - cols[:, None]
    dy = rows[None, :] - rows[:, None]
    return np.stack([dx, dy, dx**2 + dy**2], axis=-1).astype(np.float32)


def kernel_offsets(num_heads: int) -> np.ndarray:
    """The (dx, dy) offset each head attends to after local init: f32[k*k, 2], k = floor(sqrt(H)).

    Heads cover a k x k kernel centred on the query patch (for even k the centre falls between
    patches) in ConViT's order (GPSA.local_init): head h = i + k j attends to dx = j - centre,
    dy = i - centre, so consecutive heads run down a kernel column. Heads beyond k*k get none.
    """
    kernel_size = math.isqrt(num_heads)
    centre = (kernel_size - 1) / 2
    dx, dy = np.divmod(np.arange(kernel_size * kernel_size), kernel_size)
    return np.stack([dx - centre, dy - centre], axis=-1).astype(np.float32)


def local_init(locality_strength: float) -> nn.initializers.Initializer:
    """Initialiser for the 3 -> H positional projection that points head h at its kernel offset.

    With weights alpha * (2 dx_h, 2 dy_h, -1), the positional logit of offset d is
    -alpha |d - delta_h|^2 + const, so head h's attention peaks at delta_h and sharpens with
    alpha (the locality strength).
    """

    def init(key: Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> Array:
        num_inputs, num_heads = shape
        if num_inputs != 3:
            raise ValueError(f"positional projection must map 3 features, got {num_inputs}")
        offsets = kernel_offsets(num_heads)
        local = np.concatenate(
            [2.0 * offsets.T, -np.ones((1, len(offsets)), np.float32)], axis=0
        )  # [3, k*k]
        # Heads that do not fit in the k x k kernel keep the random init, scaled by alpha like
        # the rest, as in ConViT.
        kernel = dense_init(key, shape, dtype).at[:, : len(offsets)].set(jnp.asarray(local, dtype))
        return locality_strength * kernel

    return init


def identity_init(key: Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> Array:
    """Identity value projection (ConViT's local init), so heads start by copying their patch."""
    del key
    if shape[0] != shape[1]:
        raise ValueError(f"identity init needs a square kernel, got {shape}")
    return jnp.eye(shape[0], dtype=dtype)


def grid_size_of(num_tokens: int) -> int:
    """S for N = S * S tokens; GPSA needs the patch grid, so no class token may be present."""
    size = math.isqrt(num_tokens)
    if size * size != num_tokens:
        raise ValueError(
            f"GPSA needs a square grid of patch tokens, got {num_tokens} tokens; the class token "
            "must be joined after the last GPSA layer"
        )
    return size


class GatedPositionalSelfAttention(nn.Module):
    """GPSA over patch tokens x: [B, N, C] with N = S * S; conv_strength: f32[] in [0, 1].

    Parameter names follow ConViT (qk, v, proj, pos_proj, gating_param) so that weights map
    one-to-one. `conv_strength` is a traced array, never a Python constant: the schedule moves
    it inside one compiled train step.

    The fast path (`gpsa_attention`): heads are projected straight into [B, H, N, d], the
    input-independent positional map P [H, N, N] is computed once per call for the whole batch,
    and at s = 1 the content path (the qk projection and its softmax) is skipped without a
    recompilation. The mixed A is sown as ('intermediates', 'attention_weights') when that
    collection is mutable, for analysis and tests.
    """

    num_heads: int
    locality_strength: float = 1.0
    use_local_init: bool = True
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, conv_strength: Array, *, train: bool = False) -> Array:
        grid_size = self._check(x, conv_strength)
        width = x.shape[-1]
        qk_kernel = DenseKernel(2 * width, kernel_init=dense_init, name="qk")(width)
        v_init = identity_init if self.use_local_init else dense_init
        v_kernel = DenseKernel(width, kernel_init=v_init, name="v")(width)
        proj_kernel, proj_bias = DenseKernel(
            width, use_bias=True, kernel_init=dense_init, name="proj"
        )(width)

        # Positional attention: logits v_pos . r_ij (not scaled by 1/sqrt(d)), softmax in f32.
        pos_init = local_init(self.locality_strength) if self.use_local_init else dense_init
        pos_kernel, pos_bias = DenseKernel(
            self.num_heads, use_bias=True, kernel_init=pos_init, name="pos_proj"
        )(3)
        positional = positional_attention(pos_kernel, pos_bias, grid_size)  # [H, N, N]

        gating_param = self.param(
            "gating_param", nn.initializers.ones, (self.num_heads,), jnp.float32
        )
        gate = effective_gate(gating_param, conv_strength)  # [H]

        cast = functools.partial(jnp.asarray, dtype=self.dtype)
        x, qk_kernel = cast(x), cast(qk_kernel)
        v = project_heads(x, cast(v_kernel), self.num_heads)  # [B, H, N, d]
        if self.is_mutable_collection("intermediates"):
            q, k = split_query_key(project_heads(x, qk_kernel, 2 * self.num_heads))
            self.sow(
                "intermediates",
                "attention_weights",
                mixed_attention(q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), positional, gate),
            )
        out = gpsa_attention(x, qk_kernel, v, positional, gate, conv_strength >= 1.0)
        out = merge_heads(out.astype(self.dtype), cast(proj_kernel)) + cast(proj_bias)
        return nn.Dropout(self.dropout_rate)(out, deterministic=not train)

    @nn.nowrap
    def _check(self, x: Array, conv_strength: Array) -> int:
        if x.ndim != 3:
            raise ValueError(f"GPSA expects tokens [B, N, C], got shape {x.shape}")
        if x.shape[-1] % self.num_heads:
            raise ValueError(f"width {x.shape[-1]} is not divisible by {self.num_heads} heads")
        if jnp.shape(conv_strength) != ():
            raise ValueError(
                f"conv_strength must be a scalar, got shape {jnp.shape(conv_strength)}"
            )
        return grid_size_of(x.shape[1])


class DenseKernel(nn.Module):
    """The parameters of an `nn.Dense` (kernel f32[in, out], bias f32[out]), not applied.

    Same names, shapes, initialisers and init rngs as nn.Dense, so the parameter tree is the
    same; the layer applies them in its own layout (heads first) or not at all (skipped paths).
    """

    features: int
    use_bias: bool = False
    kernel_init: nn.initializers.Initializer = dense_init

    @nn.compact
    def __call__(self, in_features: int) -> Any:
        kernel = self.param("kernel", self.kernel_init, (in_features, self.features), jnp.float32)
        if not self.use_bias:
            return kernel
        return kernel, self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)


def project_heads(x: Array, kernel: Array, num_heads: int) -> Array:
    """x [B, N, C] @ kernel [C, H*d] -> heads [B, H, N, d].

    One dot whose output XLA lays out heads-first for the batched attention products (measured
    on CPU: 5% faster per step than a plain [B*N, C] matmul followed by a transpose).
    """
    return jnp.einsum("bnc,chd->bhnd", x, kernel.reshape(kernel.shape[0], num_heads, -1))


def merge_heads(heads: Array, kernel: Array) -> Array:
    """heads [B, H, N, d] @ kernel [H*d, C] -> [B, N, C]: concatenating heads, then projecting."""
    _, num_heads, _, head_dim = heads.shape
    return jnp.einsum("bhnd,hdc->bnc", heads, kernel.reshape(num_heads, head_dim, -1))


def content_attention(q: Array, k: Array) -> Array:
    """softmax(q k^T / sqrt(d)) in float32: q, k [B, H, N, d] -> f32[B, H, N, N]."""
    q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    logits = jnp.einsum("bhnd,bhmd->bhnm", q, k, preferred_element_type=jnp.float32)
    return jax.nn.softmax(logits, axis=-1)


def positional_attention(kernel: Array, bias: Array, grid_size: int) -> Array:
    """softmax(v_pos . r_ij + b) over the N keys that exist (no padding), f32[H, N, N];
    kernel f32[3, H], bias f32[H].

    The 3 -> H projection is written as three broadcast multiply-adds: as a dot, XLA:CPU runs
    it (and its transpose) as tiny matmuls with a fixed cost each, which `bench --profile`
    put at 6 ms of a 1 s ConViT-Ti step (32 px, 2-core CPU).
    """
    offsets = jnp.asarray(relative_indices(grid_size).transpose(2, 0, 1))  # [3, N, N]
    logits = bias[:, None, None] + sum(
        kernel[i][:, None, None] * offsets[i][None] for i in range(offsets.shape[0])
    )  # [H, N, N]
    return jax.nn.softmax(logits, axis=-1)


def gpsa_attention(
    x: Array, qk_kernel: Array, v: Array, positional: Array, gate: Array, is_conv: Array
) -> Array:
    """GPSA's A V for every head, [B, H, N, d]; x [B, N, C], v [B, H, N, d], P [H, N, N], g [H].

    A = (1 - g) softmax(QK^T / sqrt(d)) + g P, mixed in float32 and built once per example
    (on CPU one A V product beats two). q and k come from one fused projection (qk_kernel
    [C, 2C], timm's layout: all query heads, then all key heads). When `is_conv` (s >= 1, so
    g = 1) the content path, with its qk projection, is skipped: a `lax.cond` on a traced bool,
    so one compiled step serves both. The skip is exact: the content term is multiplied by
    1 - g = 0, and the gradients of q, k and the gate are then 0 either way.
    """
    operands = (x, qk_kernel, v, positional, gate)
    return jax.lax.cond(is_conv, _positional_values, _mixed_values, *operands)


def split_query_key(qk: Array) -> tuple[Array, Array]:
    """[B, 2H, N, d] from the fused projection -> (q, k), each [B, H, N, d]."""
    return jnp.split(qk, 2, axis=1)


def _mixed_values(x, qk_kernel, v, positional, gate):
    q, k = split_query_key(project_heads(x, qk_kernel, 2 * v.shape[1]))
    g = gate[:, None, None]
    attention = (1.0 - g) * content_attention(q, k) + g * positional
    return jnp.einsum("bhnm,bhmd->bhnd", attention.astype(v.dtype), v)


def _positional_values(x, qk_kernel, v, positional, gate):
    """P V with the input-independent P [H, N, N] shared by the whole batch."""
    del x, qk_kernel, gate
    return jnp.einsum("hnm,bhmd->bhnd", positional.astype(v.dtype), v)


def effective_gate(gating_param: Array, conv_strength: Array) -> Array:
    """PRS gate per head: s + (1 - s) sigmoid(lambda); f32[H]. At s = 1 its lambda-gradient is 0."""
    s = jnp.asarray(conv_strength, jnp.float32)
    return s + (1.0 - s) * jax.nn.sigmoid(gating_param.astype(jnp.float32))


def mixed_attention(q: Array, k: Array, positional: Array, gate: Array) -> Array:
    """The full GPSA attention matrix f32[B, H, N, N] from q, k [B, N, H, d], P [H, N, N], g [H]."""
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bnhd,bmhd->bhnm", q, k).astype(jnp.float32) * scale
    content = jax.nn.softmax(logits, axis=-1)
    g = gate[:, None, None]
    return (1.0 - g) * content + g * positional[None].astype(jnp.float32)
