"""The ViT family: parameter counts against timm, shapes, feature maps, and the GPSA layout."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prs_jax.models import apply_with_feature_maps, count_params, create_model
from prs_jax.models.vit import VIT_VARIANTS
from tests.support.jitted import jit_apply, jit_init

# Measured with timm 1.0.31 (sum of p.numel() over model.parameters()).
TIMM_PARAM_COUNTS = [
    ("convit_tiny", 224, 16, 1000, 5_710_512),
    ("convit_small", 224, 16, 1000, 27_777_322),
    ("convit_base", 224, 16, 1000, 86_540_040),
    ("convit_tiny", 32, 4, 100, 5_373_228),
    ("convit_small", 32, 4, 100, 27_019_558),
    ("deit_tiny", 224, 16, 1000, 5_717_416),
    ("deit_small", 224, 16, 1000, 22_050_664),
    ("deit_base", 224, 16, 1000, 86_567_656),
]


def abstract_init(model, image_size, batch=2, dtype=jnp.float32):
    images = jnp.zeros((batch, image_size, image_size, 3), dtype)
    strength = jnp.ones((model.num_gpsa_layers,))
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), images, strength, train=False)
    ), jax.eval_shape(
        lambda v: model.apply(v, images, strength, train=False),
        jax.eval_shape(lambda: model.init(jax.random.key(0), images, strength)),
    )


@pytest.mark.parametrize("name,image_size,patch,classes,expected", TIMM_PARAM_COUNTS)
def test_parameter_count_matches_timm(name, image_size, patch, classes, expected):
    model = create_model(name, num_classes=classes, patch_size=patch)
    variables, _ = abstract_init(model, image_size, batch=1)
    assert count_params(variables["params"]) == expected


@pytest.mark.parametrize("name", sorted(VIT_VARIANTS))
@pytest.mark.parametrize("image_size,patch", [(32, 4), (32, 2), (224, 16)])
def test_shapes_and_dtypes_for_every_named_size(name, image_size, patch):
    model = create_model(name, num_classes=10, patch_size=patch, dtype=jnp.bfloat16)
    variables, logits = abstract_init(model, image_size)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    leaves = jax.tree.leaves(variables["params"])
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)  # bf16 compute, f32 params
    grid = image_size // patch
    params = variables["params"]
    assert params["pos_embed"].shape[1] == grid * grid + (0 if model.num_gpsa_layers else 1)
    gpsa_blocks = [
        k for k, v in params.items() if k.startswith("blocks_") and "gating_param" in v["attn"]
    ]
    assert len(gpsa_blocks) == VIT_VARIANTS[name]["num_gpsa_layers"]


def test_deit_has_no_gpsa_layer_and_takes_an_empty_strength_vector():
    model = create_model("deit_tiny", num_classes=10, patch_size=4)
    assert model.num_gpsa_layers == 0
    variables, logits = abstract_init(model, 32)
    assert not any(
        "gating_param" in b["attn"]
        for k, b in variables["params"].items()
        if k.startswith("blocks_")
    )
    assert logits.shape == (2, 10)


def test_conv_strength_must_have_one_value_per_gpsa_layer():
    model = create_model("convit_tiny", num_classes=10, patch_size=4)
    with pytest.raises(ValueError, match=r"one value per GPSA layer"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.ones((3,)))


def test_image_size_must_be_divisible_by_patch():
    model = create_model("convit_tiny", num_classes=10, patch_size=5)
    with pytest.raises(ValueError, match="divisible by patch_size=5"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.ones((10,)))


def test_more_gpsa_layers_than_blocks_is_rejected():
    model = create_model("convit_tiny", num_classes=10, patch_size=4, num_gpsa_layers=12)
    with pytest.raises(ValueError, match="num_gpsa_layers=12"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.ones((12,)))


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(ValueError, match="convit_tiny.*resnet50"):
        create_model("convit_huge", num_classes=10)


def test_a_field_the_model_lacks_is_an_error_naming_the_field_and_the_model():
    with pytest.raises(
        ValueError,
        match="model 'resnet18' has no field 'num_gpsa_layers'; its "
        "fields: stem, width, zero_init_residual, dtype$",
    ):
        create_model("resnet18", num_classes=10, num_gpsa_layers=2)
    with pytest.raises(
        ValueError,
        match="model 'deit_tiny' has no field 'width'; its fields: patch_size, hidden_size",
    ):
        create_model("deit_tiny", num_classes=10, patch_size=4, width=64)


def small_vit(**overrides):
    config = dict(patch_size=4, hidden_size=32, depth=4, num_heads=4, num_gpsa_layers=2)
    config.update(overrides)
    return create_model("convit_tiny", num_classes=5, **config)


def test_feature_maps_are_embedding_then_attention_and_mlp_per_block():
    model = small_vit()
    images = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
    variables = jit_init(model)(jax.random.key(1), images, jnp.ones((2,)))
    logits, maps = jax.jit(functools.partial(apply_with_feature_maps, model))(
        variables, images, jnp.ones((2,))
    )
    kinds = model.feature_map_kinds()
    assert len(maps) == len(kinds) == 1 + 2 * 4
    assert kinds[:3] == ("embedding", "attention", "mlp")
    assert all(m.shape == (3, 8, 8, 32) for m in maps)
    # The last map is the final block's output without the class token: re-running the head on it
    # with the class token is what produced the logits, so the class token must be excluded.
    assert logits.shape == (3, 5)


def test_feature_maps_equal_the_residual_stream():
    """The MLP-residual map of block i is the input of block i + 1's attention residual."""
    model = small_vit(num_gpsa_layers=0, depth=2)
    images = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    variables = model.init(jax.random.key(1), images, jnp.ones((0,)))
    _, maps = apply_with_feature_maps(model, variables, images)
    params = variables["params"]
    patches = (
        jax.lax.conv_general_dilated(
            images,
            params["patch_embed"]["kernel"],
            (4, 4),
            "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        + params["patch_embed"]["bias"]
    )
    # ConViT with no GPSA layer: position embedding added before the class token joins.
    expected = patches + params["pos_embed"].reshape(1, 4, 4, 32)
    np.testing.assert_allclose(maps[0], expected, atol=1e-5)


def test_stochastic_depth_and_dropout_only_in_training():
    model = small_vit(drop_path_rate=0.5, dropout_rate=0.1)
    images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    strength = jnp.full((2,), 0.5)
    variables = jit_init(model)(jax.random.key(1), images, strength)
    apply = jit_apply(model)
    eval_a = apply(variables, images, strength, train=False)
    eval_b = apply(variables, images, strength, train=False)
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a = apply(variables, images, strength, train=True, rngs={"dropout": jax.random.key(2)})
    train_b = apply(variables, images, strength, train=True, rngs={"dropout": jax.random.key(3)})
    assert jnp.abs(train_a - eval_a).max() > 1e-4
    assert jnp.abs(train_a - train_b).max() > 1e-4


def test_conv_strength_is_traced_so_one_compilation_serves_all_values():
    model = small_vit()
    images = jnp.ones((1, 32, 32, 3))
    variables = jit_init(model)(jax.random.key(1), images, jnp.ones((2,)))
    traces = []

    @jax.jit
    def forward(strength):
        traces.append(1)
        return model.apply(variables, images, strength)

    outs = [forward(jnp.array(s, jnp.float32)) for s in ([1.0, 1.0], [0.5, 1.0], [0.0, 0.0])]
    assert len(traces) == 1
    assert jnp.abs(outs[0] - outs[2]).max() > 0


def test_class_token_reads_the_image_through_self_attention():
    """Changing a patch changes the logits (the class token is joined before an MHSA block)."""
    model = small_vit()
    images = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
    variables = jit_init(model)(jax.random.key(1), images, jnp.ones((2,)))
    apply = jit_apply(model)
    base = apply(variables, images, jnp.ones((2,)))
    changed = apply(variables, images.at[:, :4, :4].add(1.0), jnp.ones((2,)))
    assert jnp.abs(base - changed).max() > 1e-5
    assert math.isfinite(float(base.sum()))


def test_fresh_weights_have_timms_std_of_0_02_not_flaxs_2_sigma_cut():
    """timm's trunc_normal_(std=.02) cuts at +-2 absolute (100 sigma): N(0, 0.02^2), with 4.55% of
    weights beyond 2 sigma. flax's truncated_normal(0.02) cuts at 2 sigma: std 0.0176, none."""
    model = create_model("convit_tiny", num_classes=100, patch_size=4)
    images, strength = jnp.zeros((1, 32, 32, 3)), jnp.ones((10,))
    params = jax.jit(model.init)(jax.random.key(0), images, strength)["params"]
    weights = {
        "fc1": params["blocks_11"]["mlp"]["fc1"]["kernel"],  # 147,456 weights
        "qk": params["blocks_0"]["attn"]["qk"]["kernel"],
        "qkv": params["blocks_11"]["attn"]["qkv"]["kernel"],
        "pos_embed": params["pos_embed"],  # 12,288
    }
    for name, w in weights.items():
        assert float(jnp.std(w)) == pytest.approx(0.02, abs=4e-4), name
    beyond_two_sigma = float(jnp.mean(jnp.abs(weights["fc1"]) > 0.04))
    assert beyond_two_sigma == pytest.approx(0.0455, abs=0.002)
