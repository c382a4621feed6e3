"""On-device label smoothing, mixup and cutmix (timm's Mixup in batch mode, as in DeiT)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prs_jax.method import mixing

B, H, W, C, K = 4, 8, 8, 3, 4


def batch(seed=0):
    """Distinct random images and one-hot targets for labels 0..3 (no two examples alike)."""
    images = jax.random.normal(jax.random.PRNGKey(seed), (B, H, W, C))
    targets = mixing.one_hot_smoothed(jnp.arange(B), K, 0.0)
    return images, targets


def mix(rng, images, targets, **kwargs):
    kwargs = {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, **kwargs}
    return mixing.mixup_cutmix(rng, images, targets, **kwargs)


def keys(n):
    return jax.random.split(jax.random.PRNGKey(42), n)


# --- label smoothing ----------------------------------------------------------------------------


def test_label_smoothing_on_and_off_values():
    targets = mixing.one_hot_smoothed(jnp.array([0, 2]), 4, 0.1)
    np.testing.assert_allclose(
        targets, [[0.925, 0.025, 0.025, 0.025], [0.025, 0.025, 0.925, 0.025]], rtol=1e-6
    )
    np.testing.assert_allclose(targets.sum(axis=1), [1.0, 1.0], rtol=1e-6)
    assert targets.dtype == jnp.float32


def test_no_smoothing_is_one_hot():
    targets = mixing.one_hot_smoothed(jnp.array([1]), 3, 0.0)
    np.testing.assert_array_equal(targets, [[0.0, 1.0, 0.0]])


# --- mixup --------------------------------------------------------------------------------------


def test_mixup_is_lam_x_plus_one_minus_lam_reversed_x():
    images, targets = batch()
    mixed, mixed_targets = mix(jax.random.PRNGKey(0), images, targets, cutmix_alpha=0.0)
    lam = float(mixed_targets[0, 0])  # example 0 (label 0) is mixed with example 3 (label 3)
    assert 0.0 < lam < 1.0
    np.testing.assert_allclose(mixed_targets[0], [lam, 0, 0, 1 - lam], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mixed_targets[1], [0, lam, 1 - lam, 0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[::-1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha,variance", [(0.2, 0.1786), (0.8, 0.0962), (4.0, 0.0278)])
def test_mixup_lam_follows_beta_alpha_alpha(alpha, variance):
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)).
    images, targets = batch()
    mix_lam = jax.vmap(
        lambda r: mix(r, images, targets, mixup_alpha=alpha, cutmix_alpha=0.0)[1][0, 0]
    )
    lam = np.asarray(mix_lam(keys(1000)))
    np.testing.assert_allclose(lam.mean(), 0.5, atol=0.03)
    np.testing.assert_allclose(lam.var(), variance, atol=0.005)


# --- cutmix -------------------------------------------------------------------------------------


def cut_mask(images, mixed):
    """bool[H, W]: pixels from the reversed batch; asserts each pixel is from x or x[::-1]."""
    from_x = np.all(np.asarray(mixed) == np.asarray(images), axis=(0, 3))
    from_reversed = np.all(np.asarray(mixed) == np.asarray(images[::-1]), axis=(0, 3))
    np.testing.assert_array_equal(from_x | from_reversed, np.ones((H, W), bool))
    return from_reversed


def test_cutmix_pastes_one_box_from_the_reversed_batch_and_lam_is_its_area():
    images, targets = batch()
    cut_areas = []
    for rng in keys(20):
        mixed, mixed_targets = mix(rng, images, targets, mixup_alpha=0.0)
        box = cut_mask(images, mixed)
        rows, cols = box.any(axis=1), box.any(axis=0)
        # A rectangle: the cut pixels are exactly the product of its rows and columns.
        np.testing.assert_array_equal(box, np.outer(rows, cols))
        for line in (rows, cols):
            assert np.all(np.diff(np.flatnonzero(line)) == 1)
        lam = float(mixed_targets[0, 0])
        np.testing.assert_allclose(1 - lam, box.mean(), atol=1e-6)
        np.testing.assert_allclose(mixed_targets[0], [lam, 0, 0, 1 - lam], atol=1e-6)
        cut_areas.append(box.mean())
    assert max(cut_areas) > 0.1  # the boxes were not all empty


def test_cutmix_box_sides_follow_timm():
    # lam = 0.5 on 10 px: side int(10 * sqrt(0.5)) = 7, extending 7 // 2 = 3 px either side of
    # the centre: 6 px when the box is inside the image, fewer when clipped at a border.
    boxes = jax.vmap(lambda r: jnp.stack(mixing.cutmix_box(r, jnp.float32(0.5), 10, 10)))(keys(200))
    y_low, y_high, x_low, x_high = np.asarray(boxes).T
    heights, widths = y_high - y_low, x_high - x_low
    assert set(heights) == {3, 4, 5, 6} and set(widths) == {3, 4, 5, 6}
    inside = (y_low > 0) & (y_high < 10)
    assert inside.any() and (heights[inside] == 6).all()


def test_cutmix_box_is_empty_for_lam_one():
    y_low, y_high, x_low, x_high = mixing.cutmix_box(jax.random.PRNGKey(0), jnp.float32(1.0), 8, 8)
    assert int(y_high - y_low) == 0 and int(x_high - x_low) == 0


# --- choosing between them, and not mixing ------------------------------------------------------


def is_cutmix(images, mixed):
    return np.all(
        (np.asarray(mixed) == np.asarray(images)) | (np.asarray(mixed) == np.asarray(images[::-1]))
    )


def test_switch_prob_one_always_cutmix_zero_always_mixup():
    images, targets = batch()
    for rng in keys(10):
        assert is_cutmix(images, mix(rng, images, targets, switch_prob=1.0)[0])
        mixed, mixed_targets = mix(rng, images, targets, switch_prob=0.0)
        lam = float(mixed_targets[0, 0])
        expected = lam * images + (1 - lam) * images[::-1]
        np.testing.assert_allclose(mixed, expected, rtol=1e-5, atol=1e-6)


def test_both_alphas_choose_cutmix_with_switch_prob():
    images, targets = batch()
    mixed = jax.vmap(lambda r: mix(r, images, targets, switch_prob=0.25)[0])(keys(400))
    fraction = np.mean([is_cutmix(images, m) for m in np.asarray(mixed)])
    assert abs(fraction - 0.25) < 0.06


def test_mix_prob_leaves_the_other_batches_unchanged():
    images, targets = batch()
    mixed_targets = jax.vmap(lambda r: mix(r, images, targets, mix_prob=0.5)[1])(keys(400))
    unchanged = np.all(np.asarray(mixed_targets) == np.asarray(targets), axis=(1, 2))
    assert abs(unchanged.mean() - 0.5) < 0.08


@pytest.mark.parametrize("kwargs", [dict(mixup_alpha=0.0, cutmix_alpha=0.0), dict(mix_prob=0.0)])
def test_no_mixing_is_the_identity(kwargs):
    images, targets = batch()
    mixed, mixed_targets = mix(jax.random.PRNGKey(0), images, targets, **kwargs)
    np.testing.assert_array_equal(mixed, images)
    np.testing.assert_array_equal(mixed_targets, targets)


def test_mixed_targets_rows_sum_to_one():
    images, _ = batch()
    targets = mixing.one_hot_smoothed(jnp.array([0, 1, 1, 3]), K, 0.1)
    for rng in keys(10):
        _, mixed_targets = mix(rng, images, targets)
        np.testing.assert_allclose(mixed_targets.sum(axis=1), np.ones(B), rtol=1e-6)


def test_different_rngs_give_different_batches_and_the_same_rng_the_same():
    images, targets = batch()
    first, second = keys(2)
    np.testing.assert_array_equal(mix(first, images, targets)[0], mix(first, images, targets)[0])
    assert not np.allclose(mix(first, images, targets)[1], mix(second, images, targets)[1])


def test_jit_traces_once_and_equals_eager():
    images, targets = batch()
    kwargs = dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, mix_prob=0.9)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def jitted(rng, images, targets):
        return mixing.mixup_cutmix(rng, images, targets, **kwargs)

    eager = functools.partial(mixing.mixup_cutmix, **kwargs)
    for rng in keys(8):
        for got, want in zip(jitted(rng, images, targets), eager(rng, images, targets)):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
