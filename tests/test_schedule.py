"""The PRS conv-strength schedule, the switch steps, training length and the learning rate.

The tables use L = 4 GPSA layers and 10 steps per epoch, so epoch = step / 10.
"""

import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from prs_jax.method import schedule

STEPS_PER_EPOCH = 10


def strength_fn(first, last, ramp=0.0, num_layers=4):
    config = ml_collections.ConfigDict(
        dict(first_layer_switch_epoch=first, last_layer_switch_epoch=last, ramp_epochs=ramp)
    )
    return schedule.make_conv_strength_fn(num_layers, STEPS_PER_EPOCH, config)


def table(fn, steps):
    return np.stack([np.asarray(fn(jnp.int32(step))) for step in steps])


# --- switch_epochs -----------------------------------------------------------------------------


def test_switch_epochs_are_linear_in_depth_from_first_to_last():
    np.testing.assert_array_equal(schedule.switch_epochs(4, 3.0, 0.0), [3.0, 2.0, 1.0, 0.0])
    np.testing.assert_array_equal(schedule.switch_epochs(3, 10.0, 20.0), [10.0, 15.0, 20.0])
    assert schedule.switch_epochs(4, 3.0, 0.0).dtype == np.float32


def test_switch_epochs_one_layer_takes_the_first_and_zero_layers_is_empty():
    np.testing.assert_array_equal(schedule.switch_epochs(1, 3.0, 0.0), [3.0])
    assert schedule.switch_epochs(0, 3.0, 0.0).shape == (0,)


def test_switch_epochs_never_is_inf_for_every_layer_not_nan():
    np.testing.assert_array_equal(schedule.switch_epochs(3, math.inf, math.inf), [math.inf] * 3)


# --- conv_strength: the special cases, hard switch ------------------------------------------------


def test_prs_late_layers_switch_first():
    # e = [3, 2, 1, 0] epochs: layer 3 (deepest) is attention from step 0, layer 0 from step 30.
    expected = {
        0: [1, 1, 1, 0],
        9: [1, 1, 1, 0],
        10: [1, 1, 0, 0],
        19: [1, 1, 0, 0],
        20: [1, 0, 0, 0],
        29: [1, 0, 0, 0],
        30: [0, 0, 0, 0],
        100: [0, 0, 0, 0],
    }
    np.testing.assert_array_equal(table(strength_fn(3.0, 0.0), expected), list(expected.values()))


def test_reversed_prs_shallow_layers_switch_first():
    expected = {
        0: [0, 1, 1, 1],
        10: [0, 0, 1, 1],
        20: [0, 0, 0, 1],
        29: [0, 0, 0, 1],
        30: [0, 0, 0, 0],
    }
    np.testing.assert_array_equal(table(strength_fn(0.0, 3.0), expected), list(expected.values()))


def test_uniform_switch_moves_every_layer_at_once():
    expected = {0: [1, 1, 1, 1], 19: [1, 1, 1, 1], 20: [0, 0, 0, 0], 50: [0, 0, 0, 0]}
    np.testing.assert_array_equal(table(strength_fn(2.0, 2.0), expected), list(expected.values()))


def test_convit_is_attention_from_the_first_step():
    np.testing.assert_array_equal(table(strength_fn(0.0, 0.0), [0, 1, 37, 1000]), np.zeros((4, 4)))


@pytest.mark.parametrize("never", [6.0, math.inf])
def test_pure_conv_never_switches_within_the_run(never):
    # A 5-epoch run is steps 0..50; a switch epoch past it (or inf) keeps every layer a conv.
    np.testing.assert_array_equal(table(strength_fn(never, never), range(51)), np.ones((51, 4)))


def test_a_switch_at_the_last_epoch_is_reached_at_the_final_step():
    # Why "never" must be past num_epochs: e = 5 is hit at step 50 = total_steps of 5 epochs.
    np.testing.assert_array_equal(table(strength_fn(5.0, 5.0), [49, 50]), [[1] * 4, [0] * 4])


def test_fractional_switch_epoch_switches_at_the_first_step_past_it():
    # e = 1.25 epochs = step 12.5: step 12 is still a conv, step 13 is attention.
    np.testing.assert_array_equal(
        table(strength_fn(1.25, 1.25, num_layers=1), [12, 13]), [[1.0], [0.0]]
    )


# --- conv_strength: the ramp --------------------------------------------------------------------


def test_ramp_falls_linearly_from_the_switch_epoch_over_ramp_epochs():
    # PRS e = [3, 2, 1, 0] with a 1-epoch ramp: s_l = clip(e_l + 1 - step / 10, 0, 1).
    expected = {
        0: [1, 1, 1, 1],
        5: [1, 1, 1, 0.5],
        10: [1, 1, 1, 0],
        12: [1, 1, 0.8, 0],
        15: [1, 1, 0.5, 0],
        27: [1, 0.3, 0, 0],
        39: [0.1, 0, 0, 0],
        40: [0, 0, 0, 0],
    }
    np.testing.assert_allclose(
        table(strength_fn(3.0, 0.0, ramp=1.0), expected), list(expected.values()), atol=1e-6
    )


def test_ramp_is_continuous_monotone_and_in_unit_interval():
    ramp_epochs = 0.5
    strengths = table(strength_fn(3.0, 0.0, ramp=ramp_epochs), range(60))
    steps = np.diff(strengths, axis=0)
    # A jump between consecutive steps is at most one step's share of the ramp: 1 / 5.
    assert np.abs(steps).max() <= 1.0 / (ramp_epochs * STEPS_PER_EPOCH) + 1e-6
    assert np.abs(steps).max() >= 0.2 - 1e-6  # the ramp is really crossed at that slope
    assert (steps <= 0).all()
    assert strengths.min() == 0.0 and strengths.max() == 1.0


def test_ramp_is_exactly_one_at_the_switch_epoch():
    # 11 steps per epoch, a 5-epoch ramp from epoch 1: steps 11 to 66. 55 * float32(1 / 55) is
    # an ulp below 1, so the formula alone would start the ramp one step early.
    config = ml_collections.ConfigDict(
        dict(first_layer_switch_epoch=1.0, last_layer_switch_epoch=1.0, ramp_epochs=5.0)
    )
    fn = schedule.make_conv_strength_fn(1, 11, config)
    assert float(fn(jnp.int32(11))[0]) == 1.0
    np.testing.assert_allclose(float(fn(jnp.int32(12))[0]), 54 / 55, rtol=1e-6)
    assert float(fn(jnp.int32(66))[0]) == 0.0
    assert schedule.layer_switch_steps(fn, 100, 1) == [12, 66]


@pytest.mark.parametrize(
    "first,last,ramp", [(3, 0, 0), (0, 3, 0), (2, 2, 0), (3, 0, 1.5), (0.7, 2.3, 0.35)]
)
def test_every_schedule_is_monotone_non_increasing_in_step(first, last, ramp):
    strengths = table(strength_fn(first, last, ramp=ramp), range(60))
    assert (np.diff(strengths, axis=0) <= 0).all()
    assert ((strengths >= 0) & (strengths <= 1)).all()


def test_jitted_schedule_traces_once_and_matches_eager_bit_for_bit():
    # A 55-step ramp (11 steps per epoch, 5 epochs), where x / 55 and x * (1 / 55) differ.
    config = ml_collections.ConfigDict(
        dict(first_layer_switch_epoch=3.0, last_layer_switch_epoch=0.0, ramp_epochs=5.0)
    )
    fn = schedule.make_conv_strength_fn(4, 11, config)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def jitted(step):
        return fn(step)

    steps = list(range(0, 100)) + [1000, 10**6]
    jitted_values = np.stack([np.asarray(jitted(jnp.int32(step))) for step in steps])
    eager_values = np.stack([np.asarray(fn(step)) for step in steps])
    np.testing.assert_array_equal(jitted_values, eager_values)
    assert jitted._cache_size() == 1


def test_conv_strength_is_float32_of_shape_num_layers():
    value = strength_fn(3.0, 0.0, num_layers=6)(jnp.int32(7))
    assert value.shape == (6,) and value.dtype == jnp.float32
    assert strength_fn(3.0, 0.0, num_layers=0)(jnp.int32(7)).shape == (0,)


# --- layer_switch_steps -------------------------------------------------------------------------


def test_switch_steps_of_hard_prs_are_the_switch_epochs_in_steps():
    assert schedule.layer_switch_steps(strength_fn(3.0, 0.0), 50, 4) == [0, 10, 20, 30]


def test_switch_steps_with_a_ramp_are_ramp_starts_and_ends():
    # Layer l's strength first drops below 1 one step after e_l and first reaches 0 at e_l + 1.
    assert schedule.layer_switch_steps(strength_fn(3.0, 0.0, ramp=1.0), 50, 4) == [
        1,
        10,
        11,
        20,
        21,
        30,
        31,
        40,
    ]


def test_switch_steps_stop_at_total_steps():
    assert schedule.layer_switch_steps(strength_fn(3.0, 0.0), 25, 4) == [0, 10, 20]
    assert schedule.layer_switch_steps(strength_fn(3.0, 0.0), 30, 4) == [0, 10, 20, 30]


def test_switch_steps_of_the_special_cases():
    assert schedule.layer_switch_steps(strength_fn(0.0, 0.0), 50, 4) == [0]  # ConViT
    assert schedule.layer_switch_steps(strength_fn(math.inf, math.inf), 50, 4) == []  # pure conv
    assert schedule.layer_switch_steps(strength_fn(2.0, 2.0), 50, 4) == [20]  # uniform
    assert schedule.layer_switch_steps(strength_fn(1.25, 1.25), 50, 4) == [13]
    assert schedule.layer_switch_steps(strength_fn(0.0, 0.0), 50, 0) == []


def test_switch_steps_equal_a_scan_over_every_step():
    # e = [2.3, 1.9, 1.5, 1.1, 0.7] epochs = steps [23, 19, 15, 11, 7], ramps of 3.5 steps:
    # each strength first drops below 1 at e_l * 10 + 1 and reaches 0 at ceil(e_l * 10 + 3.5).
    fn = strength_fn(2.3, 0.7, ramp=0.35, num_layers=5)
    total_steps = 40
    strengths = table(fn, range(total_steps + 1))
    scanned = set()
    for layer in range(5):
        scanned.add(int(np.argmax(strengths[:, layer] < 1)))
        scanned.add(int(np.argmax(strengths[:, layer] == 0)))
    expected = [8, 11, 12, 15, 16, 19, 20, 23, 24, 27]
    assert sorted(scanned) == expected
    assert schedule.layer_switch_steps(fn, total_steps, 5) == expected


# --- training_steps -----------------------------------------------------------------------------


def test_training_steps_for_cifar_drop_the_last_partial_batch():
    steps = schedule.training_steps(50_000, 128, num_epochs=300, warmup_epochs=5)
    assert steps == schedule.TrainingSteps(
        steps_per_epoch=390, total_steps=117_000, warmup_steps=1950
    )


def test_training_steps_round_fractional_epochs():
    steps = schedule.training_steps(1000, 100, num_epochs=2.34, warmup_epochs=0.26)
    assert steps == schedule.TrainingSteps(steps_per_epoch=10, total_steps=23, warmup_steps=3)


def test_training_steps_take_at_least_one_step_per_epoch_and_cap_warmup():
    steps = schedule.training_steps(100, 128, num_epochs=2, warmup_epochs=5)
    assert steps == schedule.TrainingSteps(steps_per_epoch=1, total_steps=2, warmup_steps=2)


# --- learning_rate_schedule ---------------------------------------------------------------------

STEPS = schedule.TrainingSteps(steps_per_epoch=10, total_steps=100, warmup_steps=10)


def test_learning_rate_warms_up_linearly_then_follows_the_cosine_of_the_global_step():
    # timm's CosineLRScheduler as DeiT builds it (warmup_prefix=False), t counted in steps.
    lr = schedule.learning_rate_schedule(
        1e-3, STEPS, init_learning_rate=1e-6, end_learning_rate=1e-5
    )
    cosine = lambda t: 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * t / 100))  # noqa: E731
    expected = {
        0: 1e-6,  # DeiT's warmup_lr
        5: 1e-6 + 5 * (1e-3 - 1e-6) / 10,
        9: 1e-6 + 9 * (1e-3 - 1e-6) / 10,
        10: cosine(10),  # the cosine at step 10 of 100, not restarted after the warmup
        50: 1e-5 + (1e-3 - 1e-5) * 0.5,  # halfway through the run
        100: 1e-5,
        150: 1e-5,
    }
    np.testing.assert_allclose(
        [float(lr(s)) for s in expected], list(expected.values()), rtol=1e-5, atol=1e-10
    )
    np.testing.assert_allclose(cosine(10), 9.7577e-4, rtol=1e-4)


def test_learning_rate_decreases_after_warmup():
    lr = schedule.learning_rate_schedule(1e-3, STEPS)
    values = np.array([float(lr(s)) for s in range(10, 101)])
    assert (np.diff(values) < 0).all()
    assert (np.diff([float(lr(s)) for s in range(11)]) > 0).all()


def test_learning_rate_without_warmup_starts_at_the_base_rate():
    steps = schedule.TrainingSteps(steps_per_epoch=10, total_steps=100, warmup_steps=0)
    lr = schedule.learning_rate_schedule(1e-3, steps, end_learning_rate=0.0)
    np.testing.assert_allclose(
        [float(lr(0)), float(lr(50)), float(lr(100))], [1e-3, 5e-4, 0.0], atol=1e-10
    )


def test_learning_rate_init_value_and_jit():
    lr = schedule.learning_rate_schedule(1e-3, STEPS, init_learning_rate=1e-6)
    np.testing.assert_allclose(float(lr(0)), 1e-6, rtol=1e-5)
    for step in (3, 10, 77):
        np.testing.assert_allclose(float(jax.jit(lr)(jnp.int32(step))), float(lr(step)), rtol=1e-6)


def test_learning_rate_when_warmup_is_the_whole_run():
    steps = schedule.TrainingSteps(steps_per_epoch=1, total_steps=4, warmup_steps=4)
    lr = schedule.learning_rate_schedule(1e-3, steps, end_learning_rate=1e-5)
    np.testing.assert_allclose([float(lr(s)) for s in (0, 2, 4)], [0.0, 5e-4, 1e-5], rtol=1e-6)
