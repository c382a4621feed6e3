"""ResNet baselines: parameter counts against torchvision, shapes, feature maps, BatchNorm."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prs_jax.models import apply_with_feature_maps, count_params, create_model
from prs_jax.models.resnet import ResNet, resnet18, resnet50
from tests.support.jitted import jit_apply, jit_init

# torchvision: sum(p.numel() for p in resnetXX(num_classes=1000).parameters()).
TORCHVISION_RESNET18 = 11_689_512
TORCHVISION_RESNET50 = 25_557_032
# The CIFAR stem swaps conv1's 7x7x3x64 kernel for a 3x3x3x64 one; nothing else changes.
CIFAR_RESNET18 = TORCHVISION_RESNET18 - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64


def abstract_init(model, image_size, batch=2):
    """Shapes of (variables, logits, feature maps) without running a convolution."""
    images = jnp.zeros((batch, image_size, image_size, 3), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images))
    logits, state = jax.eval_shape(
        lambda v: model.apply(v, images, train=False, mutable=["intermediates"]), variables
    )
    return variables, logits, state["intermediates"]["feature_maps"]


def random_images(batch, size, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch, size, size, 3), jnp.float32)


def tiny_resnet(block="basic", stem="cifar", width=8, **kwargs):
    """Two stages of one block: a stem BN, plain and projecting blocks, in a fraction of a second."""
    return ResNet(stage_sizes=(1, 1), block=block, num_classes=10, stem=stem, width=width, **kwargs)


@pytest.fixture(scope="module")
def small_resnet18():
    """A narrow ResNet-18 (width 8) at 16 px with its initial variables: (model, images, variables)."""
    model = resnet18(10, width=8)
    images = random_images(8, 16)
    return model, images, jit_init(model)(jax.random.key(0), images)


@pytest.mark.parametrize(
    "factory,stem,image_size,expected",
    [
        (resnet50, "imagenet", 224, TORCHVISION_RESNET50),
        (resnet18, "imagenet", 224, TORCHVISION_RESNET18),
        (resnet18, "cifar", 32, CIFAR_RESNET18),
    ],
)
def test_parameter_count_matches_torchvision(factory, stem, image_size, expected):
    variables, _, _ = abstract_init(factory(1000, stem=stem), image_size, batch=1)
    assert count_params(variables["params"]) == expected


def test_batch_stats_mirror_every_batch_norm():
    variables, _, _ = abstract_init(resnet18(10), 32, batch=1)
    # ResNet-18: stem BN + 8 blocks x 2 BNs + 3 projection BNs = 20, each with mean and var.
    assert len(jax.tree.leaves(variables["batch_stats"])) == 2 * 20
    assert count_params(variables["batch_stats"]) == 2 * (
        64 + 2 * 2 * (64 + 128 + 256 + 512) + 128 + 256 + 512
    )


@pytest.mark.parametrize("factory", [resnet18, resnet50])
@pytest.mark.parametrize("stem,image_size", [("cifar", 32), ("imagenet", 224)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_logits_are_float32_and_params_stay_float32(factory, stem, image_size, dtype):
    model = factory(10, stem=stem, dtype=dtype)
    variables, logits, feature_maps = abstract_init(model, image_size, batch=3)
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    # The convolutions really run in the compute dtype.
    assert {fm.dtype for fm in feature_maps} == {jnp.dtype(dtype)}


def test_resnet18_cifar_feature_maps_at_32px():
    model = resnet18(100, stem="cifar")
    _, _, feature_maps = abstract_init(model, 32)
    assert [fm.shape[1:] for fm in feature_maps] == [
        (32, 32, 64),  # stem
        (32, 32, 64), (32, 32, 64),
        (16, 16, 128), (16, 16, 128),
        (8, 8, 256), (8, 8, 256),
        (4, 4, 512), (4, 4, 512),
    ]  # fmt: skip
    assert model.feature_map_kinds() == (
        "embedding",
        "convolution", "convolution",
        "downsampling", "convolution",
        "downsampling", "convolution",
        "downsampling", "convolution",
    )  # fmt: skip


def test_resnet50_imagenet_feature_maps_at_224px():
    model = resnet50(1000)
    _, _, feature_maps = abstract_init(model, 224)
    expected = (
        [(56, 56, 64)]  # stem, after the max-pool
        + [(56, 56, 256)] * 3
        + [(28, 28, 512)] * 4
        + [(14, 14, 1024)] * 6
        + [(7, 7, 2048)] * 3
    )
    assert [fm.shape[1:] for fm in feature_maps] == expected
    kinds = model.feature_map_kinds()
    assert len(kinds) == 1 + 16
    # The first bottleneck projects 64 -> 256 channels at the same resolution.
    assert [i for i, kind in enumerate(kinds) if kind == "downsampling"] == [1, 4, 8, 14]


@pytest.mark.parametrize(
    "model,image_size",
    [
        (resnet18(10), 32),
        (resnet18(10, stem="imagenet"), 64),
        (resnet50(10), 64),
        (resnet50(10, stem="cifar"), 32),
    ],
)
def test_feature_map_kinds_mark_where_the_shape_changes(model, image_size):
    """'downsampling' exactly where a block changes resolution or channels."""
    _, _, feature_maps = abstract_init(model, image_size)
    shapes = [fm.shape for fm in feature_maps]
    from_shapes = ("embedding",) + tuple(
        "downsampling" if now != before else "convolution"
        for before, now in zip(shapes, shapes[1:])
    )
    assert model.feature_map_kinds() == from_shapes
    assert len(shapes) == 1 + sum(model.stage_sizes)


def test_feature_map_kinds_need_no_binding_or_init():
    # Called on a fresh, unbound module: pure Python from the fields.
    model = ResNet(stage_sizes=(1, 2), block="basic", num_classes=3, stem="cifar", width=4)
    assert model.feature_map_kinds() == ("embedding", "convolution", "downsampling", "convolution")


def test_last_feature_map_is_what_the_head_reads(small_resnet18):
    model, images, variables = small_resnet18
    logits, feature_maps = jax.jit(functools.partial(apply_with_feature_maps, model))(
        variables, images
    )
    pooled = jnp.mean(feature_maps[-1], axis=(1, 2))
    head = variables["params"]["fc"]
    np.testing.assert_allclose(logits, pooled @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5)


def test_train_mode_updates_every_batch_stat(small_resnet18):
    model, images, variables = small_resnet18
    _, new_state = jit_apply(model)(variables, images, train=True, mutable=("batch_stats",))
    old = jax.tree.leaves(variables["batch_stats"])
    new = jax.tree.leaves(new_state["batch_stats"])
    assert len(new) == len(old) == 2 * 20
    assert all(float(jnp.max(jnp.abs(a - b))) > 1e-4 for a, b in zip(old, new))


def test_eval_mode_is_independent_of_other_images_in_the_batch(small_resnet18):
    model, images, variables = small_resnet18
    # Make the running statistics non-trivial first, as after some training.
    apply = jit_apply(model)
    _, state = apply(variables, images * 2.0 + 1.0, train=True, mutable=("batch_stats",))
    variables = {**variables, **state}

    alone = apply(variables, images[:1], train=False)
    in_batch = apply(variables, images, train=False)
    np.testing.assert_allclose(alone[0], in_batch[0], rtol=1e-5, atol=1e-5)
    # Train mode normalises by batch statistics, so there the same image's logits do move.
    alone_train, _ = apply(variables, images[:2], train=True, mutable=("batch_stats",))
    batch_train, _ = apply(variables, images, train=True, mutable=("batch_stats",))
    assert float(jnp.max(jnp.abs(alone_train[0] - batch_train[0]))) > 1e-3


def test_batch_norm_momentum_and_epsilon_follow_pytorch(small_resnet18):
    """One train step from init: running = 0.9 * init + 0.1 * batch (PyTorch momentum 0.1)."""
    model, images, variables = small_resnet18
    images = images + 0.5
    _, state = model.apply(
        variables,
        images,
        train=True,
        mutable=["batch_stats", "intermediates"],
        capture_intermediates=True,
    )
    captured = state["intermediates"]
    conv1_out = captured["conv1"]["__call__"][0]
    batch_mean = jnp.mean(conv1_out, axis=(0, 1, 2))
    batch_var = jnp.var(conv1_out, axis=(0, 1, 2))  # flax keeps the biased variance
    running = state["batch_stats"]["bn1"]
    assert float(jnp.max(jnp.abs(batch_mean))) > 1e-2  # the check below is not trivially 0 == 0
    np.testing.assert_allclose(running["mean"], 0.1 * batch_mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(running["var"], 0.9 * 1.0 + 0.1 * batch_var, rtol=1e-4, atol=1e-6)
    # Epsilon 1e-5: at init (scale 1, bias 0) the train-mode bn1 output is (x - mean) / sqrt(var + eps).
    bn1_out = captured["bn1"]["__call__"][0]
    np.testing.assert_allclose(
        bn1_out, (conv1_out - batch_mean) / jnp.sqrt(batch_var + 1e-5), rtol=1e-4, atol=1e-4
    )


def test_padding_is_pytorch_symmetric_on_even_inputs():
    """7x7/2 stem conv, 3x3/2 max-pool and 3x3/2 block conv pad k // 2 on both sides ('SAME' would not)."""
    model = tiny_resnet(stem="imagenet")
    images = random_images(2, 32)
    variables = model.init(jax.random.key(0), images)
    _, captured = model.apply(
        variables, images, train=False, mutable=["intermediates"], capture_intermediates=True
    )
    inter, params = captured["intermediates"], variables["params"]

    def torch_conv(x, kernel, stride):
        pad = kernel.shape[0] // 2
        return jax.lax.conv_general_dilated(
            x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # fmt: skip

    stem = inter["conv1"]["__call__"][0]
    assert stem.shape == (2, 16, 16, 8)
    np.testing.assert_allclose(
        stem, torch_conv(images, params["conv1"]["kernel"], 2), rtol=1e-5, atol=1e-5
    )

    stem_relu = jax.nn.relu(inter["bn1"]["__call__"][0])
    pooled = jax.lax.reduce_window(
        stem_relu,
        -jnp.inf,
        jax.lax.max,
        (1, 3, 3, 1),
        (1, 2, 2, 1),
        ((0, 0), (1, 1), (1, 1), (0, 0)),
    )
    np.testing.assert_allclose(inter["feature_maps"][0], pooled, rtol=1e-6)

    block_in = inter["feature_maps"][1]  # layer1_0's output feeds layer2_0, the strided block
    np.testing.assert_allclose(
        inter["layer2_0"]["conv1"]["__call__"][0],
        torch_conv(block_in, params["layer2_0"]["conv1"]["kernel"], 2),
        rtol=1e-5,
        atol=1e-5,
    )


def test_zero_init_residual_makes_identity_blocks_at_init():
    images = random_images(2, 16)
    for zero_init, scale in [(True, 0.0), (False, 1.0)]:
        model = tiny_resnet(zero_init_residual=zero_init)
        variables = model.init(jax.random.key(0), images)
        assert (
            float(jnp.max(jnp.abs(variables["params"]["layer1_0"]["bn2"]["scale"] - scale))) == 0.0
        )
        _, feature_maps = apply_with_feature_maps(model, variables, images)
        # layer1_0 does not project: with a zero last BN scale it returns relu(stem) = stem.
        identical = bool(jnp.all(feature_maps[1] == feature_maps[0]))
        assert identical == zero_init
    bottleneck = tiny_resnet("bottleneck", width=4, zero_init_residual=True)
    params = bottleneck.init(jax.random.key(0), images)["params"]
    assert [
        float(jnp.max(jnp.abs(params[name]["bn3"]["scale"]))) for name in ("layer1_0", "layer2_0")
    ] == [0.0, 0.0]
    assert float(jnp.min(params["layer1_0"]["bn2"]["scale"])) == 1.0  # only the last BN is zeroed


def test_conv_strength_is_ignored_but_must_be_empty(small_resnet18):
    model, images, variables = small_resnet18
    assert model.num_gpsa_layers == 0
    np.testing.assert_array_equal(
        model.apply(variables, images), model.apply(variables, images, jnp.zeros((0,)))
    )
    with pytest.raises(ValueError, match="no GPSA layer"):
        model.apply(variables, images, jnp.ones((3,)))


def test_unknown_stem_or_block_is_rejected():
    with pytest.raises(ValueError, match="stem must be one of"):
        resnet18(10, stem="tiny").init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="block must be one of"):
        ResNet(stage_sizes=(1,), block="wide", num_classes=3, stem="cifar").feature_map_kinds()


def test_create_model_builds_resnets_by_name():
    model = create_model("resnet50", num_classes=100, stem="cifar")
    assert isinstance(model, ResNet) and model.block == "bottleneck" and model.stem == "cifar"
    assert create_model("resnet18", num_classes=100).stem == "cifar"


def test_bottleneck_strides_on_its_3x3_conv():
    """torchvision's ResNet v1.5: conv1 (1x1) keeps the resolution, conv2 (3x3) halves it."""
    model = tiny_resnet("bottleneck", width=4)
    images = random_images(2, 16)
    _, shapes = jax.eval_shape(
        lambda: model.init_with_output(
            jax.random.key(0), images, mutable=["params", "batch_stats", "intermediates"],
            capture_intermediates=True,
        )
    )  # fmt: skip
    block = shapes["intermediates"]["layer2_0"]
    assert block["conv1"]["__call__"][0].shape == (2, 16, 16, 8)
    assert block["conv2"]["__call__"][0].shape == (2, 8, 8, 8)
    assert block["conv3"]["__call__"][0].shape == (2, 8, 8, 32)
    assert block["downsample_conv"]["__call__"][0].shape == (2, 8, 8, 32)
