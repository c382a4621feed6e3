"""Train subsets by ratio: exact class-balanced sizes, nesting, seeding; the pipeline and TFDS
sources around them (digits, mocked CIFAR-100, and a real array_record TFDS dataset built here)."""

import hashlib
import importlib.resources
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from prs_jax import data
from prs_jax.data import sources, subsets

RATIOS = (0.05, 0.1, 0.25, 0.5, 1.0)
NO_AUGMENT = dict(crop_padding=0, random_flip=False, randaugment_num_ops=0, random_erasing_prob=0.0)


def digits_config(**overrides):
    config = data.default_data_config()
    config.name, config.image_size = "digits", 8
    config.update(overrides)
    return config


def unbalanced_labels():
    """Class c has 500, 13, 3, 40 and 7 examples (c = 0..4), in a shuffled order."""
    counts = [500, 13, 3, 40, 7]
    labels = np.repeat(np.arange(5), counts)
    return np.random.default_rng(0).permutation(labels), counts


# --- class_balanced_subset ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,fraction,expected",
    [
        (500, 0.05, 25),
        (500, 0.1, 50),
        (13, 0.1, 1),
        (13, 0.25, 3),
        (13, 0.5, 7),
        (3, 0.05, 1),
        (7, 1.0, 7),
        (0, 0.5, 0),
    ],
)
def test_subset_size_rounds_half_up_and_keeps_one(n, fraction, expected):
    assert subsets.subset_size(n, fraction) == expected


@pytest.mark.parametrize("fraction", RATIOS)
def test_subset_sizes_per_class_are_exact(fraction):
    labels, counts = unbalanced_labels()
    ids = subsets.class_balanced_subset(labels, fraction, seed=0)
    per_class = np.bincount(labels[ids], minlength=5)
    assert per_class.tolist() == [subsets.subset_size(n, fraction) for n in counts]
    assert ids.dtype == np.int64 and np.all(np.diff(ids) > 0)  # sorted, no repeats


def test_balanced_dataset_at_ten_percent_has_fifty_per_class():
    labels = np.tile(np.arange(100), 500)  # CIFAR-100's train split: 500 per class
    ids = subsets.class_balanced_subset(labels, 0.1, seed=3)
    assert len(ids) == 5000
    assert set(np.bincount(labels[ids], minlength=100)) == {50}


def test_subsets_are_nested_across_ratios():
    labels, _ = unbalanced_labels()
    sets = [set(subsets.class_balanced_subset(labels, r, seed=7)) for r in RATIOS]
    for smaller, larger in zip(sets, sets[1:]):
        assert smaller < larger
    assert sets[-1] == set(range(len(labels)))


def test_same_seed_same_ids_different_seed_different_ids():
    labels, _ = unbalanced_labels()
    ids = subsets.class_balanced_subset(labels, 0.25, seed=0)
    np.testing.assert_array_equal(subsets.class_balanced_subset(labels, 0.25, seed=0), ids)
    other = subsets.class_balanced_subset(labels, 0.25, seed=1)
    assert len(other) == len(ids) and set(other) != set(ids)


def test_a_class_subset_does_not_depend_on_the_other_classes():
    labels, _ = unbalanced_labels()
    ids = subsets.class_balanced_subset(labels, 0.5, seed=0)
    without_class_0 = np.flatnonzero(labels != 0)
    ids_without = without_class_0[subsets.class_balanced_subset(labels[without_class_0], 0.5, 0)]
    np.testing.assert_array_equal(ids_without, ids[labels[ids] != 0])


def test_bad_fraction_is_an_error():
    with pytest.raises(ValueError, match=r"fraction=0.0 must be in \(0, 1\]"):
        subsets.class_balanced_subset(np.zeros(4, int), 0.0, seed=0)


# --- through the pipeline (digits) --------------------------------------------------------------


def test_dataset_info_counts_the_subset_and_the_whole_eval_split():
    labels = sources.DigitsSource("train", 8).labels()
    expected = sum(subsets.subset_size(n, 0.25) for n in np.bincount(labels))
    info = data.dataset_info(digits_config(train_fraction=0.25))
    assert info.num_train_examples == expected
    assert info.num_eval_examples == 360  # evaluation always on the whole split


def test_train_iterator_reads_exactly_the_subset():
    config = digits_config(train_fraction=0.1, **NO_AUGMENT)
    ids = data.train_example_ids(config)
    source = sources.DigitsSource("train", 8)
    fingerprint = lambda image: hashlib.sha1(np.asarray(image).tobytes()).hexdigest()  # noqa: E731
    expected = sorted(fingerprint(source[i]["image"]) for i in ids)
    # One batch is one epoch: every example of the subset once.
    batch = next(data.create_train_iterator(config, global_batch_size=len(ids), seed=0))
    mean, std = (np.asarray(x) for x in sources.normalization(config))
    images = np.round((batch["image"] * std + mean) * 255).astype(np.uint8)
    assert sorted(fingerprint(im) for im in images) == expected
    np.testing.assert_array_equal(np.sort(batch["label"]), np.sort(source.labels()[ids]))


def test_subset_ids_follow_subset_seed_not_the_training_seed():
    a = data.train_example_ids(digits_config(train_fraction=0.5, subset_seed=0))
    b = data.train_example_ids(digits_config(train_fraction=0.5, subset_seed=1))
    assert not np.array_equal(a, b)
    assert data.train_example_ids(digits_config()) is None  # 100%: no subset


def test_chosen_ids_are_saved_in_the_workdir(tmp_path):
    config = digits_config(train_fraction=0.05)
    path = data.save_train_example_ids(config, str(tmp_path))
    assert path == str(tmp_path / data.TRAIN_IDS_FILENAME)
    np.testing.assert_array_equal(np.load(path), data.train_example_ids(config))
    assert data.save_train_example_ids(digits_config(), str(tmp_path / "full")) is None


# --- TFDS sources -------------------------------------------------------------------------------


def test_mocked_cifar_labels_without_decoding_match_the_records():
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        config = data.default_data_config()
        source = sources.open_source(config, "train")
        np.testing.assert_array_equal(source.labels(), [source[i]["label"] for i in range(40)])
        config.train_fraction = 0.5
        ids = data.train_example_ids(config)
        expected = subsets.class_balanced_subset(source.labels(), 0.5, seed=0)
        np.testing.assert_array_equal(ids, expected)
        assert data.dataset_info(config).num_train_examples == len(ids)


def _examples(count, seed):
    rng = np.random.default_rng(seed)
    for i in range(count):
        # Sizes vary (10..12 x 12), as ImageNet's do; the label is i mod 3.
        image = rng.integers(0, 256, (10 + i % 3, 12, 3), dtype=np.uint8)
        yield i, {"image": image, "label": i % 3}


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
    """A real 3-class TFDS dataset in array_record files: 30 train, 9 test examples."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    with pytest.MonkeyPatch.context() as patch:
        # TFDS 4.9 imports `importlib_resources` when it builds a dataset, a package that it
        # declares only for Python < 3.9; the standard library's module serves on 3.11.
        if "importlib_resources" not in sys.modules:
            patch.setitem(sys.modules, "importlib_resources", importlib.resources)
        tfds.dataset_builders.store_as_tfds_dataset(
            name="prs_tiny_shapes",
            version="1.0.0",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
            ),
            split_datasets={"train": list(_examples(30, 0)), "test": list(_examples(9, 1))},
            data_dir=data_dir,
            file_format="array_record",
        )
    return data_dir


def test_any_tfds_classification_dataset_is_a_source(tiny_tfds):
    config = data.default_data_config()
    config.update(name="prs_tiny_shapes", data_dir=tiny_tfds, image_size=8, eval_split="test")
    assert data.dataset_info(config) == data.DatasetInfo("prs_tiny_shapes", 3, 30, 9, 8)
    resized = sources.open_source(config, "train")[4]
    assert resized["image"].shape == (8, 8, 3) and resized["label"] in (0, 1, 2)
    native = sources.open_source(config, "train", native_size=True)
    assert {native[i]["image"].shape for i in range(30)} == {(10, 12, 3), (11, 12, 3), (12, 12, 3)}
    batch = next(data.create_train_iterator(config, global_batch_size=10, seed=0))
    assert batch["image"].shape == (10, 8, 8, 3)


def test_tfds_labels_are_read_without_images_and_cached(tiny_tfds, tmp_path):
    config = data.default_data_config()
    config.update(name="prs_tiny_shapes", data_dir=tiny_tfds, label_cache_dir=str(tmp_path))
    source = sources.open_source(config, "train")
    labels = source.labels()
    np.testing.assert_array_equal(labels, [source[i]["label"] for i in range(30)])
    (cache,) = tmp_path.glob("prs_jax_labels.prs_tiny_shapes-1.0.0.train.npy")
    # Later reads come from the cache: change it, and the source reports the change.
    np.save(cache, (labels + 1) % 3)
    np.testing.assert_array_equal(sources.open_source(config, "train").labels(), (labels + 1) % 3)


def test_unprepared_unknown_and_bad_split_tfds_names_say_how_to_fix(tiny_tfds):
    config = data.default_data_config()
    config.update(name="mnist", data_dir=tiny_tfds)  # a TFDS name, not prepared there
    with pytest.raises(ValueError, match=r"name='mnist' split 'train' cannot be read.*tfds build"):
        data.dataset_info(config)
    config.update(name="no_such_dataset_xyz")
    with pytest.raises(ValueError, match=r"unknown config.data.name='no_such_dataset_xyz'.*folder"):
        data.dataset_info(config)
    config.update(name="prs_tiny_shapes", train_split="validation")
    with pytest.raises(ValueError, match=r"split 'validation': Unknown split.*\['train', 'test'\]"):
        data.dataset_info(config)
