"""Relative log-amplitude spectra (prs_jax.fourier): the recipe against hand-derived values and an
independent NumPy implementation, one row per block of each model, and the command line on the
checkpoint of a tiny training run."""

import functools
import math
import os

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from scipy import ndimage

from prs_jax import fourier, models
from prs_jax.analysis import fourier as fourier_lib
from prs_jax.analysis import spectra as spectral
from prs_jax.training import state as train_state
from prs_jax.training import steps as train_steps
from prs_jax.training import train
from tests.test_configs import load

EULER_GAMMA = 0.5772156649015329


def numpy_relative_log_amplitude(feature_map):
    """Park & Kim's recipe for a square map, step by step, in float64 NumPy."""
    spectrum = np.fft.fft2(np.asarray(feature_map, np.float64), axes=(1, 2))
    log_amplitude = np.log(np.abs(spectrum) + 1e-6).mean(axis=(0, 3))  # [H, W]
    height, width = log_amplitude.shape
    log_amplitude = np.roll(log_amplitude, (height // 2, width // 2), axis=(0, 1))
    diagonal = np.diag(log_amplitude)[height // 2 :]
    return diagonal - diagonal[0]


def noise(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def plane_wave(height, width, rows_k, cols_k):
    """1 + cos(2 pi (rows_k h / H + cols_k w / W)) as a [1, H, W, 1] map."""
    h, w = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    wave = 1.0 + np.cos(2 * np.pi * (rows_k * h / height + cols_k * w / width))
    return wave[None, :, :, None].astype(np.float32)


# --- One feature map -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [8, 16, 7])
def test_agrees_with_a_plain_numpy_implementation(size):
    # Random maps with some spatial correlation (a running sum), so the spectrum is not flat.
    feature_map = np.cumsum(noise((4, size, size, 6)), axis=1)
    np.testing.assert_allclose(
        spectral.relative_log_amplitude(feature_map),
        numpy_relative_log_amplitude(feature_map),
        atol=1e-4,
    )


@pytest.mark.parametrize("size", [16, 15])
def test_white_noise_is_flat_at_half_log_two_above_zero_frequency(size):
    # i.i.d. N(0, 1) pixels, N = H W of them. A coefficient off the zero frequency (and off the
    # Nyquist corner, which the diagonal leaves out) is complex Gaussian, |F|^2 ~ N Exp(1); the
    # zero-frequency coefficient is real, F ~ N(0, N). With E log Exp(1) = -gamma and
    # E log chi^2_1 = -gamma - log 2:
    n = size * size
    complex_log_amplitude = (math.log(n) - EULER_GAMMA) / 2
    real_log_amplitude = (math.log(n) - EULER_GAMMA - math.log(2)) / 2
    expected = complex_log_amplitude - real_log_amplitude  # log(2) / 2 = 0.347
    # Var log|F| is pi^2 / 24 (complex) and pi^2 / 8 (real): the standard error of each point.
    num_samples = 64 * 256  # examples x channels
    standard_error = math.sqrt((math.pi**2 / 24 + math.pi**2 / 8) / num_samples)

    values = np.asarray(spectral.relative_log_amplitude(noise((64, size, size, 256))))
    assert values[0] == 0.0
    np.testing.assert_allclose(values[1:], expected, atol=5 * standard_error)


def test_blurred_noise_has_strongly_negative_high_frequencies():
    blurred = ndimage.gaussian_filter(noise((8, 16, 16, 16)), sigma=(0, 1.5, 1.5, 0), mode="wrap")
    values = np.asarray(spectral.relative_log_amplitude(blurred))
    assert values[-1] < -10.0
    assert np.all(np.diff(values[1:]) < 0)  # monotonically lower towards pi


def test_a_circular_filter_shifts_the_spectrum_by_its_transfer_function():
    # F(blurred) = G F(x) exactly, so the relative log amplitude moves by log|G(k, k)| - log|G(0)|.
    kernel = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0
    x = noise((4, 16, 16, 8))
    blurred = ndimage.convolve(x, kernel[None, :, :, None], mode="wrap")
    k = np.arange(8)
    # [1, 2, 1] / 4 per axis has the transfer function (1 + cos w) / 2; the diagonal has w on both.
    transfer = ((1 + np.cos(2 * np.pi * k / 16)) / 2) ** 2
    np.testing.assert_allclose(
        spectral.relative_log_amplitude(blurred) - spectral.relative_log_amplitude(x),
        np.log(transfer),
        atol=1e-3,
    )


@pytest.mark.parametrize("scale", [1e-2, 7.5])
def test_a_positive_scale_changes_nothing(scale):
    x = noise((4, 16, 16, 8))
    np.testing.assert_allclose(
        spectral.relative_log_amplitude(scale * x), spectral.relative_log_amplitude(x), atol=1e-4
    )


@pytest.mark.parametrize(
    "height,width,rows_k,cols_k,peak",
    [(16, 16, 3, 3, 3), (9, 9, 2, 2, 2), (8, 16, 1, 2, 1), (16, 8, 2, 1, 1)],
)
def test_one_known_frequency_peaks_where_it_should(height, width, rows_k, cols_k, peak):
    values = np.asarray(spectral.relative_log_amplitude(plane_wave(height, width, rows_k, cols_k)))
    # |F| is H W at zero frequency and H W / 2 at the wave's frequency: log(1/2) relative.
    assert np.argmax(values[1:]) + 1 == peak
    np.testing.assert_allclose(values[peak], math.log(0.5), atol=1e-3)
    assert np.all(np.delete(values, [0, peak]) < -5.0)  # elsewhere only rounding error


@pytest.mark.parametrize(
    "height,width,frequencies_2pi,rows,cols",
    [
        (8, 8, [0, 1 / 8, 2 / 8, 3 / 8], [4, 5, 6, 7], [4, 5, 6, 7]),  # even: H/2 points below pi
        (7, 7, [0, 1 / 7, 2 / 7, 3 / 7], [3, 4, 5, 6], [3, 4, 5, 6]),  # odd: (H+1)/2 points
        (8, 16, [0, 1 / 8, 2 / 8, 3 / 8], [4, 5, 6, 7], [8, 10, 12, 14]),  # equal frequency
        (6, 9, [0, 1 / 6, 2 / 6], [3, 4, 5], [4, 6, 7]),  # longer axis: nearest coefficient
    ],
)
def test_odd_and_non_square_maps_define_the_diagonal(height, width, frequencies_2pi, rows, cols):
    np.testing.assert_allclose(
        spectral.diagonal_frequencies(height, width),
        2 * np.pi * np.array(frequencies_2pi),
        rtol=1e-6,
    )
    got_rows, got_cols = spectral.diagonal_indices(height, width)
    assert got_rows.tolist() == rows and got_cols.tolist() == cols
    values = spectral.relative_log_amplitude(noise((2, height, width, 3)))
    assert values.shape == (len(rows),)


@pytest.mark.parametrize("shape", [(16, 16), (8, 16), (6, 9)])
def test_a_transposed_map_has_the_same_spectrum(shape):
    x = np.cumsum(noise((3,) + shape + (5,)), axis=2)
    np.testing.assert_allclose(
        spectral.relative_log_amplitude(x),
        spectral.relative_log_amplitude(np.swapaxes(x, 1, 2)),
        atol=1e-5,
    )


def test_float32_whatever_the_input_dtype_and_jit_able():
    x = jnp.asarray(noise((4, 8, 8, 16)), jnp.bfloat16)
    values = jax.jit(spectral.relative_log_amplitude)(x)
    assert values.dtype == jnp.float32
    expected = spectral.relative_log_amplitude(x.astype(jnp.float32))
    np.testing.assert_allclose(values, expected, atol=1e-5)


# --- A whole model ---------------------------------------------------------------------------


def tiny_vit(**overrides):
    fields = dict(patch_size=2, hidden_size=16, num_heads=2, depth=3, num_gpsa_layers=2)
    return models.create_model("convit_tiny", num_classes=10, **{**fields, **overrides})


def init(model, image_size):
    """Random variables of the model's shapes, images and conv strengths.

    Parameters are drawn in NumPy from `eval_shape`: compiling `model.init` costs seconds per
    model on a CPU, and the spectra need only some fixed weights.
    """
    images = jnp.asarray(noise((4, image_size, image_size, 3)))
    conv_strength = jnp.full((model.num_gpsa_layers,), 0.5, jnp.float32)
    shapes = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.key(0), images, conv_strength
    )
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        if path[-1].key == "var":  # BatchNorm running variance
            return np.ones(leaf.shape, leaf.dtype)
        return (0.2 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes), images, conv_strength


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),  # ConViT/PRS: the class token joins after the GPSA layers
        dict(num_gpsa_layers=0, qkv_bias=True, class_token_position_embedding=True),  # DeiT
        dict(dtype=jnp.bfloat16),
    ],
)
def test_vit_has_embedding_then_attention_and_mlp_per_block(overrides):
    model = tiny_vit(**overrides)
    variables, images, conv_strength = init(model, 16)
    spectra, kinds = spectral.model_spectra(model, variables, images, conv_strength)
    assert kinds == ("embedding",) + ("attention", "mlp") * 3  # 1 + 2 x depth
    assert spectra.shape == (7, 4) and spectra.dtype == np.float32  # 8 x 8 token grid
    assert np.all(np.isfinite(spectra)) and np.all(spectra[:, 0] == 0)


def test_model_spectra_are_the_spectra_of_the_sown_feature_maps():
    model = tiny_vit()
    variables, images, conv_strength = init(model, 16)
    spectra, _ = spectral.model_spectra(model, variables, images, conv_strength)
    _, maps = jax.jit(functools.partial(models.apply_with_feature_maps, model))(
        variables, images, conv_strength
    )
    np.testing.assert_allclose(
        spectra, np.stack([spectral.relative_log_amplitude(m) for m in maps]), atol=1e-5
    )


RESNET18_KINDS = ("embedding",) + ("convolution",) * 2 + ("downsampling", "convolution") * 3
RESNET50_KINDS = (
    ("embedding", "downsampling")
    + ("convolution",) * 2
    + ("downsampling",)
    + ("convolution",) * 3
    + ("downsampling",)
    + ("convolution",) * 5
    + ("downsampling",)
    + ("convolution",) * 2
)


@pytest.mark.parametrize(
    "name,stem,image_size,kinds,lengths",
    [
        # CIFAR stem at 16 px: 16, 16, 16, 8, 8, 4, 4, 2, 2 pixels per side.
        ("resnet18", "cifar", 16, RESNET18_KINDS, [8, 8, 8, 4, 4, 2, 2, 1, 1]),
        # ImageNet stem at 32 px: 8 after the stem, then 8 (x3), 4 (x4), 2 (x6), 1 (x3).
        ("resnet50", "imagenet", 32, RESNET50_KINDS, [4] * 4 + [2] * 4 + [1] * 9),
    ],
)
def test_resnet_has_stem_then_every_residual_block(name, stem, image_size, kinds, lengths):
    model = models.create_model(name, num_classes=10, stem=stem, width=4)
    variables, images, _ = init(model, image_size)
    spectra, got_kinds = spectral.model_spectra(model, variables, images)
    assert got_kinds == kinds and len(kinds) == len(lengths)
    # Rows as long as each map's diagonal, NaN-padded to the longest.
    assert spectra.shape == (len(kinds), max(lengths))
    assert np.isfinite(spectra).sum(axis=1).tolist() == lengths
    # The last value of each row; none for a 1 x 1 or 2 x 2 map (zero frequency only).
    last = spectra[np.arange(len(lengths)), np.array(lengths) - 1]
    expected = np.where(np.array(lengths) > 1, last, np.nan)
    np.testing.assert_array_equal(spectral.high_frequency(spectra), expected)


def test_spectra_step_over_masked_batches_equals_one_pass():
    model = tiny_vit()
    variables, images, _ = init(model, 16)
    state = train_state.TrainState(
        step=jnp.asarray(5, jnp.int32),
        params=variables["params"],
        batch_stats={},
        opt_state=None,
        rng=None,
    )
    # The strengths the weights were last trained with, at step - 1 = 4, as in evaluation.
    conv_strength_fn = lambda step: jnp.where(step == 4, 1.0, 0.0) * jnp.ones(2)  # noqa: E731
    step_fn = jax.jit(spectral.make_spectra_step(model, conv_strength_fn))
    # The 4 images in two batches of 4, each half padding (garbage images, mask False).
    garbage = 100 * noise((2, 16, 16, 3))
    mask = np.array([True, True, False, False])
    batches = [
        {"image": np.concatenate([images[:2], garbage]), "mask": mask},
        {"image": np.concatenate([images[2:], garbage]), "mask": mask},
    ]
    totals = fourier_lib.accumulate_spectra(step_fn, state, batches, num_images=100)
    assert totals["count"] == 4
    one_pass, _ = spectral.model_spectra(model, variables, images, jnp.ones(2))
    np.testing.assert_allclose(spectral.mean_spectra(totals), one_pass, atol=1e-5)
    # num_images stops the count mid-batch.
    assert fourier_lib.accumulate_spectra(step_fn, state, batches, num_images=3)["count"] == 3


def test_spectra_step_runs_data_parallel_as_the_train_loop_would():
    model = tiny_vit()
    variables, images, _ = init(model, 16)
    state = train_state.TrainState(
        step=jnp.asarray(1, jnp.int32),
        params=variables["params"],
        batch_stats={},
        opt_state=None,
        rng=None,
    )
    step_fn = spectral.make_spectra_step(model, lambda step: jnp.zeros((2,), jnp.float32))
    mesh = train_state.create_mesh()
    data_sharding, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    sharded = jax.jit(step_fn, in_shardings=(replicated, data_sharding), out_shardings=replicated)
    batch = {"image": np.asarray(images), "mask": np.ones((4,), bool)}
    kinds = model.feature_map_kinds()
    scalars = spectral.high_frequency_scalars(
        sharded(state, train_steps.to_global(batch, data_sharding)), kinds
    )
    expected = spectral.high_frequency_scalars(jax.jit(step_fn)(state, batch), kinds)
    assert list(scalars)[:2] == [
        "fourier/high_frequency/block_00_embedding",
        "fourier/high_frequency/block_01_attention",
    ]
    np.testing.assert_allclose(list(scalars.values()), list(expected.values()), atol=1e-5)


# --- Runs, labels and the command line -------------------------------------------------------


@pytest.mark.parametrize(
    "config_name,arg,label",
    [
        ("digits", None, "convit_tiny PRS, switch epochs 15->5 of 30"),
        ("digits", "deit", "convit_tiny DeiT (no GPSA layer)"),
        ("cifar100", "convit", "convit_tiny ConViT (no conv phase)"),
        ("cifar100", "conv", "convit_tiny conv (never switches)"),
        ("cifar100", "uniform,switch=60", "convit_tiny uniform, switch epochs 60->60 of 300"),
        ("cifar100", "deit", "deit_tiny"),
        ("cifar100", "resnet18", "resnet18"),
    ],
)
def test_run_label_names_the_model_and_its_schedule(config_name, arg, label):
    assert fourier_lib.run_label(load(config_name)(arg)) == label
    assert fourier_lib.run_label(load(config_name)(arg), "/runs/a/") == "a: " + label


NUM_BLOCKS = 5  # embedding + 2 x (attention, mlp)


# Session scope: a module fixture is torn down whenever xdist runs another module's test
# in between, and then trained again; the group keeps its tests on one worker.
@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A 2-block PRS-ViT trained for 6 steps on the digits (8 x 8 token grid)."""
    workdir = str(tmp_path_factory.mktemp("digits_run"))
    config = load("digits")("prs,epochs=0.25")  # 22 steps per epoch -> 6 steps
    config.model.update(hidden_size=16, num_heads=2, depth=2, num_gpsa_layers=1)
    config.optimizer.warmup_epochs = 0.0
    config.eval_every_epochs = 1.0
    state = train.train_and_evaluate(config, workdir)
    return workdir, int(state.step)


def assert_png(path):
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


@pytest.mark.xdist_group("fourier_run")
def test_command_line_writes_npz_and_plots_from_a_checkpoint(tiny_run):
    workdir, last_step = tiny_run
    fourier.main(["--workdir", workdir, "--num_images", "100", "--batch_size", "64"])
    output_dir = os.path.join(workdir, "fourier", f"step_{last_step}")
    assert_png(os.path.join(output_dir, "spectra.png"))
    assert_png(os.path.join(output_dir, "high_frequency.png"))
    with np.load(os.path.join(output_dir, "fourier.npz")) as f:
        assert f["spectra"].shape == f["frequencies"].shape == (NUM_BLOCKS, 4)
        assert f["high_frequency"].shape == f["depth"].shape == (NUM_BLOCKS,)
        assert f["kinds"].tolist() == ["embedding", "attention", "mlp", "attention", "mlp"]
        assert f["map_shapes"].tolist() == [[8, 8]] * NUM_BLOCKS
        assert int(f["step"]) == last_step and int(f["num_images"]) == 100
        assert f["conv_strength"].shape == (1,)
        assert np.all(np.isfinite(f["spectra"])) and np.all(f["spectra"][:, 0] == 0)
        np.testing.assert_allclose(f["frequencies"][0], np.pi * np.array([0, 0.25, 0.5, 0.75]))


@pytest.mark.xdist_group("fourier_run")
def test_command_line_compares_runs_on_one_depth_plot(tiny_run, tmp_path):
    workdir, _ = tiny_run
    # A second run from a saved npz: an untrained ResNet-18, whose later rows are NaN-padded.
    model = models.create_model("resnet18", num_classes=10, stem="cifar", width=4)
    variables, images, _ = init(model, 16)
    spectra, kinds = spectral.model_spectra(model, variables, images)
    shapes = [[16, 16]] * 3 + [[8, 8]] * 2 + [[4, 4]] * 2 + [[2, 2]] * 2
    resnet_npz = str(tmp_path / "resnet.npz")
    fourier_lib.FourierResult(
        spectra=spectra,
        frequencies=spectral.stack_padded([spectral.diagonal_frequencies(*s) for s in shapes]),
        kinds=kinds,
        map_shapes=np.array(shapes),
        label="resnet18 (untrained)",
    ).save_npz(resnet_npz)
    output_dir = str(tmp_path / "compare")
    fourier.main(["--compare", workdir, resnet_npz, "--output_dir", output_dir])
    assert_png(os.path.join(output_dir, "high_frequency_compare.png"))


@pytest.mark.xdist_group("fourier_run")
def test_command_line_names_the_steps_when_one_is_missing(tiny_run, capsys):
    workdir, _ = tiny_run
    with pytest.raises(SystemExit) as exit_info:  # a user error: one line, exit 2 (prs_jax.cli)
        fourier.main(["--workdir", workdir, "--step", "12345"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("prs_jax.fourier: ") and "no checkpoint at step 12345" in line
