"""Input pipeline: sources, per-example augmentation, deterministic/resumable/sharded iterators.

CIFAR-100 is mocked with tfds.testing.mock_data (random images, read through tfds.data_source);
digits are scikit-learn's shipped images.
"""

import functools
import hashlib
import os

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from prs_jax import data
from prs_jax.data import augment, randaugment, sources, specs

NUM_MOCK = 70  # mocked examples per CIFAR-100 split
BATCH = 16  # 70 // 16 = 4 steps per epoch, 6 examples dropped; eval: 5 batches, 10 padding
CIFAR_MEAN = np.array([0.5071, 0.4865, 0.4409])
CIFAR_STD = np.array([0.2673, 0.2564, 0.2762])
# The pipelines' default normalisation (data.normalization='imagenet'), for every dataset.
MEAN, STD = np.array(sources.IMAGENET_MEAN), np.array(sources.IMAGENET_STD)


@pytest.fixture(scope="module")
def mock_cifar():
    with tfds.testing.mock_data(num_examples=NUM_MOCK, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


def cifar_config(**overrides):
    config = data.default_data_config()
    config.name = "cifar100"
    config.update(overrides)
    return config


def digits_config(**overrides):
    config = data.default_data_config()
    config.name, config.image_size = "digits", 16
    config.update(overrides)
    return config


NO_AUGMENT = dict(crop_padding=0, random_flip=False, randaugment_num_ops=0, random_erasing_prob=0.0)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def fingerprint(image):
    """An id for an image, exact up to normalisation rounding (images back to uint8)."""
    raw = np.round((image * STD + MEAN) * 255).astype(np.uint8)
    return hashlib.sha1(raw.tobytes()).hexdigest()


# --- config and metadata ------------------------------------------------------------------------


def test_unknown_dataset_name_names_field_and_allowed_values():
    with pytest.raises(ValueError, match=r"data\.name='mnist'.*\['cifar100', 'digits'\]"):
        data.dataset_info(digits_config(name="mnist"))


def test_dataset_info(mock_cifar):
    assert data.dataset_info(digits_config()) == data.DatasetInfo("digits", 10, 1437, 360, 16)
    assert data.dataset_info(cifar_config()) == data.DatasetInfo(
        "cifar100", 100, NUM_MOCK, NUM_MOCK, 32
    )


def test_batch_size_must_divide_by_process_count():
    with pytest.raises(ValueError, match="multiple of process_count=3"):
        data.create_train_iterator(digits_config(), global_batch_size=16, seed=0, process_count=3)


# --- sources ------------------------------------------------------------------------------------


def test_digits_split_is_stratified_disjoint_and_deterministic():
    split = sources.digits_split_indices()
    train, test = split["train"], split["test"]
    assert (len(train), len(test)) == (1437, 360)
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.union1d(train, test), np.arange(1797))
    again = sources.digits_split_indices.__wrapped__()  # recomputed, not cached
    np.testing.assert_array_equal(again["train"], train)

    from sklearn.datasets import load_digits

    labels = load_digits().target
    all_counts = np.bincount(labels, minlength=10)
    test_counts = np.bincount(labels[test], minlength=10)
    assert set(labels[train]) == set(range(10)) == set(labels[test])
    # Stratified: each class holds 20% of its examples in test, up to rounding.
    assert np.all(np.abs(test_counts - 0.2 * all_counts) <= 1), test_counts


def test_digits_source_records():
    source = sources.DigitsSource("train", image_size=16)
    record = source[0]
    assert record["image"].shape == (16, 16, 3) and record["image"].dtype == np.uint8
    np.testing.assert_array_equal(record["image"][..., 0], record["image"][..., 2])
    images = np.stack([source[i]["image"] for i in range(len(source))])
    assert images.min() == 0 and images.max() == 255  # 0..16 scaled to 0..255
    assert {source[i]["label"] for i in range(len(source))} == set(range(10))
    with pytest.raises(ValueError, match="split='validation'"):
        sources.DigitsSource("validation", image_size=16)


def test_digits_normalisation_constants_are_train_split_statistics():
    images = np.stack([r["image"] for r in sources.DigitsSource("train", image_size=8)])
    pixels = images.astype(np.float64) / 255
    spec = sources.DATASETS["digits"]
    np.testing.assert_allclose(pixels.mean(), spec.mean[0], atol=1e-4)
    np.testing.assert_allclose(pixels.std(), spec.std[0], atol=1e-4)


def test_cifar_source_records(mock_cifar):
    source = sources.open_source(cifar_config(), "train")
    assert len(source) == NUM_MOCK
    record = source[3]
    assert set(record) == {"image", "label"}
    assert record["image"].shape == (32, 32, 3) and record["image"].dtype == np.uint8
    assert 0 <= record["label"] < 100
    small = sources.open_source(cifar_config(image_size=16), "train")[3]["image"]
    assert small.shape == (16, 16, 3)


# --- augmentation -------------------------------------------------------------------------------


def test_normalize_constant_images():
    black = augment.normalize(np.zeros((4, 4, 3), np.uint8), CIFAR_MEAN, CIFAR_STD)
    white = augment.normalize(np.full((4, 4, 3), 255, np.uint8), CIFAR_MEAN, CIFAR_STD)
    assert black.dtype == np.float32
    np.testing.assert_allclose(black.mean((0, 1)), [-1.89712, -1.89743, -1.59631], atol=1e-4)
    np.testing.assert_allclose(white.mean((0, 1)), [1.84399, 2.00273, 2.02426], atol=1e-4)
    np.testing.assert_allclose(black.std((0, 1)), 0.0, atol=1e-6)


def test_pad_and_crop_is_a_shift_with_zero_fill():
    image = np.arange(1, 17, dtype=np.uint8).reshape(4, 4, 1)
    # Offset (0, 4) with padding 2: content moves down 2 rows and left 2 columns.
    expected = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [3, 4, 0, 0], [7, 8, 0, 0]], np.uint8).reshape(
        4, 4, 1
    )
    np.testing.assert_array_equal(augment.pad_and_crop(image, 2, 0, 4), expected)
    np.testing.assert_array_equal(augment.pad_and_crop(image, 2, 2, 2), image)


def test_random_crop_draws_offsets_in_0_to_2_padding():
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = augment.random_crop_with_padding(image, 4, np.random.default_rng(123))
    top, left = np.random.default_rng(123).integers(0, 9, size=2)
    np.testing.assert_array_equal(out, augment.pad_and_crop(image, 4, top, left))
    rng = np.random.default_rng(1)
    tops = set()
    for _ in range(300):
        out = augment.random_crop_with_padding(image, 4, rng)
        matches = [
            (t, l)
            for t in range(9)
            for l in range(9)
            if np.array_equal(out, augment.pad_and_crop(image, 4, t, l))
        ]
        assert matches
        tops.add(matches[0][0])
    assert tops == set(range(9))


def test_horizontal_flip_mirrors_half_the_time():
    image = np.arange(2 * 3 * 1, dtype=np.uint8).reshape(2, 3, 1)
    rng = np.random.default_rng(0)
    outs = [augment.random_horizontal_flip(image, rng) for _ in range(400)]
    flipped = [o for o in outs if not np.array_equal(o, image)]
    for o in flipped:
        np.testing.assert_array_equal(o[:, :, 0], [[2, 1, 0], [5, 4, 3]])
    assert 160 <= len(flipped) <= 240


def test_random_erasing_probability_zero_is_identity():
    image = np.random.default_rng(0).standard_normal((32, 32, 3)).astype(np.float32)
    out = augment.random_erasing(image, np.random.default_rng(0), 0.0)
    np.testing.assert_array_equal(out, image)


def test_random_erasing_probability_one_replaces_one_rectangle():
    image = np.full((32, 32, 3), 7.0, np.float32)  # noise never equals 7 exactly
    for seed in range(20):
        out = augment.random_erasing(image, np.random.default_rng(seed), 1.0)
        assert out.dtype == np.float32 and out.shape == image.shape
        changed = np.any(out != image, axis=-1)
        rows, cols = np.nonzero(changed.any(1))[0], np.nonzero(changed.any(0))[0]
        h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert changed.sum() == h * w  # one filled axis-aligned rectangle
        assert np.all(out[changed] != 7.0)  # every channel replaced
        # Area 2%..33% of 1024 and aspect 0.3..3.3, up to rounding h and w.
        assert 0.02 * 1024 * 0.7 <= h * w <= 1024 / 3 * 1.3, (h, w)
        assert 0.3 * 0.7 <= h / w <= 3.34 * 1.4, (h, w)
        noise = out[changed]
        assert abs(noise.mean()) < 0.5 and 0.6 < noise.std() < 1.4


def test_randaugment_arguments_at_magnitude_9():
    arg = functools.partial(randaugment.op_argument, magnitude=9)
    assert arg("Rotate") == pytest.approx(27.0) and arg("Rotate", negate=True) == -27.0
    assert arg("ShearX") == pytest.approx(0.27)
    assert arg("TranslateY") == pytest.approx(0.405)
    assert (arg("Posterize"), arg("Solarize"), arg("SolarizeAdd")) == (3, 230, 99)
    assert arg("Contrast") == pytest.approx(1.72) == arg("Contrast", negate=True)  # unsigned
    assert arg("Contrast", increasing=True, negate=True) == pytest.approx(0.19)
    assert (arg("Posterize", increasing=True), arg("Solarize", increasing=True)) == (1, 26)


def test_randaugment_ops_on_hand_computed_pixels():
    pixels = np.array([[[100, 128, 200], [37, 255, 20]]], np.uint8)  # 1x2 RGB
    op = randaugment.apply_op
    np.testing.assert_array_equal(op(pixels, "Invert", 9), 255 - pixels)
    # Solarize at magnitude 5: threshold 128, pixels >= 128 inverted.
    np.testing.assert_array_equal(op(pixels, "Solarize", 5), [[[100, 127, 55], [37, 0, 20]]])
    # Posterize at magnitude 9 keeps 3 bits.
    np.testing.assert_array_equal(op(pixels, "Posterize", 9), [[[96, 128, 192], [32, 224, 0]]])
    # SolarizeAdd at magnitude 10 adds 110 below 128.
    np.testing.assert_array_equal(
        op(pixels, "SolarizeAdd", 10), [[[210, 128, 200], [147, 255, 130]]]
    )
    # Brightness at magnitude 0 scales by 0.1 (timm's non-increasing table); PIL truncates.
    np.testing.assert_array_equal(op(pixels, "Brightness", 0), [[[10, 12, 20], [3, 25, 2]]])


def test_randaugment_translate_shifts_by_45_percent_with_fill():
    image = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    out = randaugment.apply_op(image, "TranslateX", 10, fill=(1, 2, 3))  # 0.45 * 20 = 9 px
    np.testing.assert_array_equal(out[:, :11], image[:, 9:])
    np.testing.assert_array_equal(out[:, 11:], np.broadcast_to([1, 2, 3], (20, 9, 3)))


@pytest.mark.parametrize(
    "name", ["Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "SolarizeAdd"]
)
def test_randaugment_magnitude_zero_is_identity_for_geometric_and_additive_ops(name):
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(randaugment.apply_op(image, name, 0, negate=True), image)


@pytest.mark.parametrize("name", ["Color", "Contrast", "Brightness", "Sharpness", "Solarize"])
def test_randaugment_increasing_magnitude_zero_is_identity(name):
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(randaugment.apply_op(image, name, 0, increasing=True), image)
    assert not np.array_equal(randaugment.apply_op(image, name, 9, increasing=True), image)


def test_rand_augment_keeps_dtype_shape_and_is_deterministic():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        randaugment.rand_augment(image, np.random.default_rng(0), num_ops=0), image
    )
    outs = [randaugment.rand_augment(image, np.random.default_rng(s)) for s in range(40)]
    assert all(o.dtype == np.uint8 and o.shape == image.shape for o in outs)
    again = randaugment.rand_augment(image, np.random.default_rng(7))
    np.testing.assert_array_equal(again, outs[7])
    # Each of 2 ops applies with probability 1/2: about a quarter of images are unchanged.
    unchanged = sum(np.array_equal(o, image) for o in outs)
    assert 3 <= unchanged <= 20, unchanged


def test_train_example_without_augmentation_is_normalisation():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = augment.train_example(
        {"image": image, "label": 5},
        np.random.default_rng(0),
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        **NO_AUGMENT,
    )
    np.testing.assert_allclose(out["image"], (image / 255 - CIFAR_MEAN) / CIFAR_STD, atol=1e-5)
    assert out["image"].dtype == np.float32 and out["label"] == 5 and out["label"].dtype == np.int32


# --- train iterator -----------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["cifar100", "digits"])
def test_train_batches_shapes_dtypes_labels(mock_cifar, dataset):
    config = cifar_config() if dataset == "cifar100" else digits_config()
    size, classes = (32, 100) if dataset == "cifar100" else (16, 10)
    batches = take(data.create_train_iterator(config, global_batch_size=BATCH, seed=0), 5)
    for batch in batches:
        assert set(batch) == {"image", "label"}
        assert batch["image"].shape == (BATCH, size, size, 3) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (BATCH,) and batch["label"].dtype == np.int32
        assert batch["label"].min() >= 0 and batch["label"].max() < classes
        assert np.all(np.isfinite(batch["image"]))


def test_digits_train_batches_are_roughly_standardised():
    config = digits_config(image_size=8, normalization="dataset", **NO_AUGMENT)
    iterator = data.create_train_iterator(config, global_batch_size=479, seed=0)
    images = np.concatenate([b["image"] for b in take(iterator, 3)])
    assert len(images) == 1437  # one epoch, every train example once
    assert abs(images.mean()) < 1e-3 and abs(images.std() - 1) < 1e-3


def test_same_seed_same_batches_different_seed_different(mock_cifar):
    make = functools.partial(data.create_train_iterator, cifar_config(), global_batch_size=BATCH)
    first = take(make(seed=0), 6)
    assert_batches_equal(first, take(make(seed=0), 6))
    other = take(make(seed=1), 6)
    assert not np.array_equal(first[0]["label"], other[0]["label"])
    assert not np.allclose(first[0]["image"], other[0]["image"])


def test_each_epoch_is_a_new_permutation_without_the_remainder(mock_cifar):
    iterator = data.create_train_iterator(
        cifar_config(**NO_AUGMENT), global_batch_size=BATCH, seed=0
    )
    epochs = [[fingerprint(im) for b in take(iterator, 4) for im in b["image"]] for _ in range(2)]
    source = sources.open_source(cifar_config(), "train")
    everything = {hashlib.sha1(source[i]["image"].tobytes()).hexdigest() for i in range(NUM_MOCK)}
    for epoch in epochs:
        assert len(epoch) == len(set(epoch)) == 64  # 70 // 16 * 16 distinct examples
        assert set(epoch) <= everything
    assert epochs[0] != epochs[1]


def test_augmentation_differs_between_epochs_of_the_same_example():
    # One batch is the whole epoch: the same 1437 images, with crops drawn anew each epoch.
    config = digits_config(**{**NO_AUGMENT, "crop_padding": 2})
    first, second = take(data.create_train_iterator(config, global_batch_size=1437, seed=0), 2)
    order = lambda b: np.lexsort(b["image"].reshape(len(b["image"]), -1).T)  # noqa: E731
    assert not np.allclose(first["image"][order(first)], second["image"][order(second)])


def assert_resumes_exactly(make, before=3, after=4):
    """An iterator restored from the state after `before` batches yields the next `after`."""
    iterator = make()
    take(iterator, before)
    state = iterator.get_state()
    expected = take(iterator, after)
    restored = make()
    restored.set_state(state)
    assert_batches_equal(take(restored, after), expected)


def assert_process_halves_make_the_global_batch(make, steps):
    """Returns each step's two halves, after checking they concatenate to the global batch."""
    global_batches = take(make(), steps)
    shards = [take(make(process_index=p, process_count=2), steps) for p in range(2)]
    halves = list(zip(*shards))
    for whole, (first, second) in zip(global_batches, halves):
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), whole[key])
    return halves


def test_resume_from_state_reproduces_the_following_batches(mock_cifar):
    make = functools.partial(
        data.create_train_iterator, cifar_config(), global_batch_size=BATCH, seed=3
    )
    assert_resumes_exactly(make, before=3, after=4)  # crosses the epoch boundary after batch 4


def test_resume_through_orbax_checkpoint(tmp_path):
    make = functools.partial(
        data.create_train_iterator, digits_config(), global_batch_size=64, seed=0
    )
    iterator = make()
    take(iterator, 5)
    with ocp.CheckpointManager(tmp_path, item_names=("data",)) as manager:
        manager.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
    expected = take(iterator, 3)
    fresh = make()
    with ocp.CheckpointManager(tmp_path, item_names=("data",)) as manager:
        manager.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    assert_batches_equal(take(fresh, 3), expected)


def test_two_processes_hold_disjoint_halves_of_the_global_batch(mock_cifar):
    make = functools.partial(
        data.create_train_iterator, cifar_config(), global_batch_size=BATCH, seed=0
    )
    for halves in assert_process_halves_make_the_global_batch(make, 5):
        assert halves[0]["image"].shape[0] == BATCH // 2
        ids = [{fingerprint(im) for im in h["image"]} for h in halves]
        assert not ids[0] & ids[1]


def test_worker_processes_give_the_same_batches():
    make = functools.partial(
        data.create_train_iterator, digits_config(), global_batch_size=32, seed=0
    )
    in_process = take(make(), 4)
    iterator = data.create_train_iterator(
        digits_config(num_workers=2), global_batch_size=32, seed=0
    )
    try:
        assert_batches_equal(take(iterator, 4), in_process)
    finally:
        iterator.close()


# --- eval iterator ------------------------------------------------------------------------------


def test_eval_covers_every_example_once_and_pads_with_masked(mock_cifar):
    shards = [
        list(
            data.create_eval_iterator(
                cifar_config(), global_batch_size=BATCH, process_index=p, process_count=2
            )
        )
        for p in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == 5  # ceil(70 / 16)
    merged = {
        key: np.concatenate([np.concatenate([a[key], b[key]]) for a, b in zip(*shards)])
        for key in ("image", "label", "mask")
    }
    assert merged["mask"].dtype == np.bool_ and merged["mask"].shape == (80,)
    np.testing.assert_array_equal(merged["mask"], np.arange(80) < NUM_MOCK)
    np.testing.assert_array_equal(merged["image"][NUM_MOCK:], 0.0)
    source = sources.open_source(cifar_config(), "test")
    expected = np.stack([source[i]["image"] for i in range(NUM_MOCK)])
    np.testing.assert_allclose(merged["image"][:NUM_MOCK], (expected / 255 - MEAN) / STD, atol=1e-5)
    np.testing.assert_array_equal(
        merged["label"][:NUM_MOCK], [source[i]["label"] for i in range(NUM_MOCK)]
    )


def test_eval_without_padding_and_repeatable():
    evaluation = data.create_eval_iterator(digits_config(), global_batch_size=72)
    first, second = list(evaluation), list(evaluation)
    assert len(first) == 5 and all(b["mask"].all() for b in first)  # 360 = 5 * 72
    assert_batches_equal(first, second)


# --- ImageNet-style crops (DeiT at 224 px) ------------------------------------------------------


def test_random_resized_crop_boxes_fit_and_follow_scale_and_aspect():
    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, h, w = augment.random_resized_crop_box(300, 400, rng, min_scale=0.08)
        assert top >= 0 and top + h <= 300 and left >= 0 and left + w <= 400
        # Area 8%..100% and aspect (w / h) 3/4..4/3, up to rounding to whole pixels.
        assert 0.08 * 0.97 <= h * w / (300 * 400) <= 1.0
        assert 0.75 * 0.97 <= w / h <= 4 / 3 * 1.03


def test_random_resized_crop_falls_back_to_the_central_box_with_a_clamped_aspect():
    # No box of area >= 100% with aspect <= 4/3 fits a 10 x 100 strip: the fallback is the
    # full-height central box of width round(10 * 4/3) = 13.
    box = augment.random_resized_crop_box(10, 100, np.random.default_rng(0), min_scale=1.0)
    assert box == (0, 43, 10, 13)


def test_random_resized_crop_of_the_whole_image_is_a_bicubic_resize():
    image = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    out = augment.random_resized_crop(image, 24, np.random.default_rng(0), min_scale=1.0)
    # Scale 1 with a square image: the box is the whole image (aspect 1 must be drawn within
    # 10 tries or the fallback gives it).
    expected = np.asarray(Image.fromarray(image).resize((24, 24), Image.Resampling.BICUBIC))
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    "shape,top,left", [((256, 256), 16, 16), ((256, 512), 16, 144), ((400, 256), 88, 16)]
)
def test_resize_center_crop_takes_the_central_224_of_a_256_short_side(shape, top, left):
    # The shorter side is already 256 = floor(224 / 0.875): no resize, just the central crop.
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = augment.resize_center_crop(image, 224, crop_pct=0.875)
    np.testing.assert_array_equal(out, image[top : top + 224, left : left + 224])


def test_resize_center_crop_resizes_the_shorter_side_then_crops():
    image = np.zeros((100, 150, 3), np.uint8)
    image[:, 60:90] = 255  # a white vertical band in the middle third
    out = augment.resize_center_crop(image, 28, crop_pct=0.875)  # short side 32, long 48
    assert out.shape == (28, 28, 3)
    # The band (x 60..90 of 150 -> 19.2..28.8 of 48, minus the left margin of 10) stays central.
    assert out[:, 14].min() > 200 and out[:, 2].max() < 30 and out[:, 25].max() < 30


def test_train_and_eval_examples_with_imagenet_crops_have_the_configured_size():
    image = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    record = {"image": image, "label": 3}
    train = augment.train_example(
        record,
        np.random.default_rng(0),
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        crop="random_resized_crop",
        image_size=32,
    )
    evaluation = augment.eval_example(
        record, mean=CIFAR_MEAN, std=CIFAR_STD, crop="resize_center_crop", image_size=32
    )
    assert train["image"].shape == evaluation["image"].shape == (32, 32, 3)
    assert evaluation["mask"] and train["label"] == evaluation["label"] == 3
    with pytest.raises(ValueError, match="unknown train crop 'center'"):
        augment.train_example(
            record, np.random.default_rng(0), mean=CIFAR_MEAN, std=CIFAR_STD, crop="center"
        )


def test_pipeline_with_imagenet_crops_reads_native_images(mock_cifar):
    # The source gives 32 px images unresized; the crops bring them to image_size = 24.
    config = cifar_config(
        image_size=24, train_crop="random_resized_crop", eval_crop="resize_center_crop"
    )
    batch = next(data.create_train_iterator(config, global_batch_size=BATCH, seed=0))
    assert batch["image"].shape == (BATCH, 24, 24, 3)
    first = next(iter(data.create_eval_iterator(config, global_batch_size=BATCH)))
    source = sources.open_source(cifar_config(), "test", native_size=True)
    expected = augment.resize_center_crop(source[0]["image"], 24, 0.875)
    np.testing.assert_allclose(first["image"][0], (expected / 255 - MEAN) / STD, atol=1e-5)
    with pytest.raises(ValueError, match=r"data.eval_crop='center'.*resize_center_crop"):
        data.dataset_info(cifar_config(eval_crop="center"))


def test_posterize_to_zero_bits_is_black_not_an_error():
    """Magnitude 10 with inc1 asks for 0 bits; Pillow >= 13 rejects that, timm gives black."""
    from PIL import Image

    from prs_jax.data import randaugment

    image = Image.new("RGB", (4, 4), (200, 100, 50))
    assert np.asarray(randaugment._posterize(image, 0)).max() == 0
    assert np.asarray(randaugment._posterize(image, 8)).tolist() == np.asarray(image).tolist()


# --- DeiT fidelity: interpolation, normalisation ------------------------------------------------


@pytest.mark.parametrize(
    "name,reference",
    [
        ("Rotate", lambda im, fill, resample: im.rotate(27.0, resample, fillcolor=fill)),
        (
            "ShearX",
            lambda im, fill, resample: im.transform(
                im.size, Image.Transform.AFFINE, (1, 0.27, 0, 0, 1, 0), resample, fillcolor=fill
            ),
        ),
        (
            "TranslateY",
            lambda im, fill, resample: im.transform(
                im.size,
                Image.Transform.AFFINE,
                (1, 0, 0, 0, 1, 0.405 * 16),
                resample,
                fillcolor=fill,
            ),
        ),
    ],
)
def test_randaugment_geometric_ops_resample_bicubic_as_deit(name, reference):
    # timm passes DeiT's interpolation='bicubic' to RandAugment through its hparams.
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = randaugment.apply_op(image, name, 9, fill=(1, 2, 3))
    pil = Image.fromarray(image)
    bicubic = np.asarray(reference(pil, (1, 2, 3), Image.Resampling.BICUBIC))
    bilinear = np.asarray(reference(pil, (1, 2, 3), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out, bicubic)
    assert not np.array_equal(out, bilinear)


def test_sources_resize_to_image_size_bicubic_as_deit():
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = specs.to_rgb_uint8(image, 16)
    resize = lambda resample: np.asarray(Image.fromarray(image).resize((16, 16), resample))  # noqa: E731
    np.testing.assert_array_equal(out, resize(Image.Resampling.BICUBIC))
    assert not np.array_equal(out, resize(Image.Resampling.BILINEAR))


@pytest.mark.parametrize(
    "normalization,mean,std",
    [(None, MEAN, STD), ("imagenet", MEAN, STD), ("dataset", CIFAR_MEAN, CIFAR_STD)],
)
def test_normalisation_is_imagenet_by_default_as_deit_or_the_dataset_own(
    mock_cifar, normalization, mean, std
):
    config = cifar_config() if normalization is None else cifar_config(normalization=normalization)
    (first, *_) = data.create_eval_iterator(config, global_batch_size=BATCH)
    source = sources.open_source(config, "test")
    expected = np.stack([source[i]["image"] for i in range(BATCH)])
    np.testing.assert_allclose(first["image"], (expected / 255 - mean) / std, atol=1e-5)
    # Train batches too: undoing the same statistics gives back whole uint8 pixel values.
    config.update(NO_AUGMENT)
    train = next(data.create_train_iterator(config, global_batch_size=BATCH, seed=0))
    pixels = (train["image"] * std + mean) * 255
    np.testing.assert_allclose(pixels, np.round(pixels), atol=2e-3)


def test_unknown_normalisation_names_the_choices():
    with pytest.raises(ValueError, match=r"normalization='cifar'; choose one of \('imagenet'"):
        data.create_train_iterator(
            digits_config(normalization="cifar"), global_batch_size=8, seed=0
        )


# --- epochs and repeated augmentation, on generated folders whose labels name the examples -------


def one_image_per_class(root, num_examples):
    """ROOT/train/<class i>/0.png, a random-noise 8x8 image each: an example's label is its id."""
    rng = np.random.default_rng(0)
    for i in range(num_examples):
        os.makedirs(root / "train" / f"c{i:03d}")
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "train" / f"c{i:03d}" / "0.png")
    config = data.default_data_config()
    config.update(name="image_folder", folder_root=str(root), image_size=8)
    return config


def epoch_labels(iterator, steps_per_epoch, num_epochs=2):
    return [
        np.concatenate([b["label"] for b in take(iterator, steps_per_epoch)])
        for _ in range(num_epochs)
    ]


def test_two_epochs_differ_in_order_and_together_see_every_example(tmp_path):
    # 21 examples, batch 4: 5 steps per epoch, and each epoch leaves out one example. With grain
    # < 0.2.13 every epoch repeated epoch 0's order, and the same example was never trained on.
    config = one_image_per_class(tmp_path, 21)
    config.update(NO_AUGMENT)
    first, second = epoch_labels(data.create_train_iterator(config, global_batch_size=4, seed=0), 5)
    assert len(set(first)) == len(set(second)) == 20
    assert not np.array_equal(first, second)
    assert set(first) | set(second) == set(range(21))


def test_repeated_augmentation_shows_each_selected_image_r_times_in_one_batch(tmp_path):
    # 40 images, batch 6: epochs of 6 steps (36 examples, as without repeats) that show 12
    # images of a fresh permutation 3 times in a row, each copy augmented anew.
    config = one_image_per_class(tmp_path, 40)
    config.repeated_augmentation = 3
    iterator = data.create_train_iterator(config, global_batch_size=6, seed=0)
    batches = take(iterator, 12)
    epochs = [np.concatenate([b["label"] for b in batches[e * 6 : (e + 1) * 6]]) for e in range(2)]
    for labels in epochs:
        assert len(labels) == 36
        np.testing.assert_array_equal(np.unique(labels, return_counts=True)[1], [3] * 12)
        np.testing.assert_array_equal(labels[::3], labels[1::3])  # copies are consecutive
    assert set(epochs[0]) != set(epochs[1])
    for batch in batches:
        for copies in batch["image"].reshape(2, 3, -1):  # the 3 copies of one image
            assert not np.allclose(copies[0], copies[1]) and not np.allclose(copies[1], copies[2])


def test_repeated_augmentation_keeps_the_epoch_length_when_r_does_not_divide_it(tmp_path):
    # 40 images, batch 8: 40 examples per epoch = 13 images x 3 + one image once.
    config = one_image_per_class(tmp_path, 40)
    config.update(NO_AUGMENT, repeated_augmentation=3)
    iterator = data.create_train_iterator(config, global_batch_size=8, seed=0)
    for labels in epoch_labels(iterator, 5):
        counts = {label: np.sum(labels == label) for label in labels}
        assert len(labels) == 40 and sorted(counts.values()) == [1] + [3] * 13
        assert counts[labels[-1]] == 1  # the epoch's last image


def test_repeated_augmentation_resumes_exactly_and_splits_across_processes(tmp_path):
    config = one_image_per_class(tmp_path, 40)
    config.repeated_augmentation = 3
    make = functools.partial(data.create_train_iterator, config, global_batch_size=8, seed=1)
    assert_resumes_exactly(make, before=3, after=4)  # crosses the epoch boundary after batch 5
    # Each process holds its slice of the same global batch: the copies of an image may sit in
    # two processes' halves, as on DeiT's GPUs, but the halves together are the global batch.
    halves = assert_process_halves_make_the_global_batch(make, 5)
    assert {len(h["label"]) for step in halves for h in step} == {4}


@pytest.mark.parametrize("repeats", [0, -3])
def test_repeated_augmentation_must_be_positive(tmp_path, repeats):
    config = one_image_per_class(tmp_path, 4)
    config.repeated_augmentation = repeats
    with pytest.raises(ValueError, match="repeated_augmentation=-?[03]; must be an integer >= 1"):
        data.create_train_iterator(config, global_batch_size=2, seed=0)
