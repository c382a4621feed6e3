"""Folders of images as a dataset: labels, splits, corrupt files and mismatched classes, on PNG
and JPEG files generated here."""

import os

import numpy as np
import pytest
from PIL import Image

from prs_jax import data
from prs_jax.data import folders, sources

# One solid colour per class, far apart, so a decoded JPEG still tells its class.
COLOURS = {"cat": (230, 20, 20), "dog": (20, 230, 20), "fish": (20, 20, 230)}
CLASSES = sorted(COLOURS)  # labels are the sorted folder names: cat 0, dog 1, fish 2


def write_images(split_dir, per_class, size=(20, 16), classes=CLASSES):
    """per_class images per class under split_dir/<class>/, alternating PNG and JPEG."""
    for name in classes:
        os.makedirs(os.path.join(split_dir, name), exist_ok=True)
        for i in range(per_class):
            image = Image.new("RGB", size, COLOURS.get(name, (128, 128, 128)))
            image.save(os.path.join(split_dir, name, f"{i:03d}.{'png' if i % 2 else 'jpg'}"))


def folder_config(root, **overrides):
    config = data.default_data_config()
    config.update(name="image_folder", folder_root=str(root), image_size=8)
    config.update(overrides)
    return config


def label_of(image):
    """The class whose colour is nearest the image's mean colour."""
    mean = np.asarray(image, np.float64).reshape(-1, 3).mean(0)
    return int(np.argmin([np.abs(mean - COLOURS[c]).sum() for c in CLASSES]))


@pytest.fixture
def root(tmp_path):
    write_images(tmp_path / "train", per_class=4)
    write_images(tmp_path / "test", per_class=2)
    return tmp_path


def test_folder_dataset_loads_with_the_right_labels(root):
    config = folder_config(root)
    assert data.dataset_info(config) == data.DatasetInfo("image_folder", 3, 12, 6, 8)
    train = sources.open_source(config, "train")
    for i in range(len(train)):
        record = train[i]
        assert record["image"].shape == (8, 8, 3) and record["image"].dtype == np.uint8
        assert record["label"] == label_of(record["image"])
    np.testing.assert_array_equal(train.labels(), [0] * 4 + [1] * 4 + [2] * 4)
    # Native size keeps the file's 16 x 20 (rows x columns).
    assert sources.open_source(config, "test", native_size=True)[0]["image"].shape == (16, 20, 3)


def test_folder_train_and_eval_iterators(root):
    config = folder_config(root, random_erasing_prob=0.0, randaugment_num_ops=0)
    batch = next(data.create_train_iterator(config, global_batch_size=12, seed=0))
    assert batch["image"].shape == (12, 8, 8, 3)
    assert sorted(batch["label"].tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    (evaluation,) = list(data.create_eval_iterator(config, global_batch_size=8))
    assert evaluation["mask"].tolist() == [True] * 6 + [False] * 2
    assert evaluation["label"][:6].tolist() == [0, 0, 1, 1, 2, 2]


def test_grayscale_and_rgba_files_become_rgb(tmp_path):
    for split in ("train", "test"):
        os.makedirs(tmp_path / split / "a")
        Image.new("L", (6, 6), 200).save(tmp_path / split / "a" / "gray.png")
        Image.new("RGBA", (6, 6), (10, 20, 30, 40)).save(tmp_path / split / "a" / "alpha.png")
    train = sources.open_source(folder_config(tmp_path, image_size=6), "train")
    images = {train[i]["image"].shape for i in range(2)}
    assert images == {(6, 6, 3)}
    np.testing.assert_array_equal(train[1]["image"][0, 0], [200, 200, 200])  # sorted: gray second


def test_corrupt_file_is_an_error_naming_it(root):
    bad = root / "train" / "dog" / "002.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(folders.CorruptImageError, match=f"cannot read image file {bad}.*'skip'"):
        data.dataset_info(folder_config(root))


@pytest.mark.parametrize("name", ["001.png", "000.jpg"])
def test_truncated_file_is_an_error_naming_it(root, name):
    bad = root / "test" / "fish" / name
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # cut into the image data
    with pytest.raises(folders.CorruptImageError, match=f"cannot read image file {bad}"):
        data.dataset_info(folder_config(root))


def test_corrupt_files_are_skipped_and_counted_when_configured(root):
    bad = [root / "train" / "cat" / "000.jpg", root / "train" / "fish" / "003.png"]
    for path in bad:
        path.write_bytes(b"garbage")
    config = folder_config(root, folder_on_corrupt="skip")
    assert data.dataset_info(config).num_train_examples == 10
    train = sources.open_source(config, "train")
    assert train.skipped == tuple(str(p) for p in bad)
    np.testing.assert_array_equal(train.labels(), [0] * 3 + [1] * 4 + [2] * 3)


def test_a_file_that_breaks_after_the_check_still_names_itself(root):
    train = sources.open_source(folder_config(root, folder_cache="never"), "train")
    path = root / "train" / "cat" / "001.png"
    path.write_bytes(b"broken later")
    with pytest.raises(folders.CorruptImageError, match=f"cannot read image file {path}"):
        train[1]


def test_class_folders_that_differ_between_splits_are_an_error(tmp_path):
    write_images(tmp_path / "train", per_class=2, classes=["cat", "dog", "fish"])
    write_images(tmp_path / "test", per_class=2, classes=["cat", "dog", "bird"])
    message = r"class folders differ.*only in train: \['fish'\]; only in test: \['bird'\]"
    with pytest.raises(ValueError, match=message):
        data.dataset_info(folder_config(tmp_path))


def test_empty_class_folder_and_missing_split_are_errors(tmp_path):
    write_images(tmp_path / "train", per_class=2)
    with pytest.raises(ValueError, match=r"no folder .*test for config.data.eval_split='test'"):
        data.dataset_info(folder_config(tmp_path))
    os.makedirs(tmp_path / "test" / "cat")
    with pytest.raises(ValueError, match=r"class folder .*test/cat has no image files"):
        data.dataset_info(folder_config(tmp_path))
    with pytest.raises(ValueError, match=r"needs config.data.folder_root=ROOT"):
        data.dataset_info(folder_config(tmp_path, folder_root=None))


def test_validation_fraction_holds_out_a_balanced_part_of_train(tmp_path):
    write_images(tmp_path / "train", per_class=8)
    config = folder_config(tmp_path, eval_split="validation", folder_validation_fraction=0.25)
    assert data.dataset_info(config) == data.DatasetInfo("image_folder", 3, 18, 6, 8)
    train = folders.folder_split(config, "train")
    held_out = folders.folder_split(config, "validation")
    assert not set(train.paths) & set(held_out.paths)
    assert len(set(train.paths) | set(held_out.paths)) == 24
    np.testing.assert_array_equal(np.bincount(held_out.labels), [2, 2, 2])
    # A folder for the eval split as well is ambiguous.
    write_images(tmp_path / "validation", per_class=1)
    folders.scan_split.cache_clear()
    with pytest.raises(ValueError, match="remove one"):
        data.dataset_info(config)


def test_train_fraction_on_a_folder_dataset(root):
    config = folder_config(root, train_fraction=0.5)
    ids = data.train_example_ids(config)
    assert len(ids) == 6 and data.dataset_info(config).num_train_examples == 6
    np.testing.assert_array_equal(np.bincount(np.repeat([0, 1, 2], 4)[ids]), [2, 2, 2])


# --- decoded images kept in memory (data.folder_cache) -----------------------------------------

TRAIN_BYTES = 12 * 20 * 16 * 3  # the root fixture's train split decoded: 12 images of 20 x 16


def gib(num_bytes):
    return num_bytes / 2**30


def in_memory(root, **overrides):
    return sources.open_source(folder_config(root, **overrides), "train").in_memory


def write_noise_images(split_dir, per_class, classes=CLASSES):
    """Random-noise images of varied sizes (PNG and JPEG): every image differs."""
    rng = np.random.default_rng(0)
    for name in classes:
        os.makedirs(os.path.join(split_dir, name), exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (8 + i, 10 + 2 * i, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(
                os.path.join(split_dir, name, f"{i:03d}.{'png' if i % 2 else 'jpg'}")
            )


@pytest.mark.parametrize("native_size", [False, True])
def test_images_kept_in_memory_are_the_records_read_from_files(tmp_path, native_size):
    write_noise_images(tmp_path / "train", per_class=6)
    held_out = dict(eval_split="validation", folder_validation_fraction=0.5)
    for split in ("train", "validation"):
        cached = sources.open_source(
            folder_config(tmp_path, **held_out), split, native_size=native_size
        )
        files = sources.open_source(
            folder_config(tmp_path, **held_out, folder_cache="never"),
            split,
            native_size=native_size,
        )
        assert cached.in_memory and not files.in_memory
        assert len(cached) == len(files) == 9
        for i in range(len(files)):
            np.testing.assert_array_equal(cached[i]["image"], files[i]["image"])
            assert cached[i]["label"] == files[i]["label"]


def test_images_in_memory_need_no_file_after_the_scan(root):
    train = sources.open_source(folder_config(root), "train")
    for path in (root / "train").rglob("*.*"):
        path.unlink()
    assert train.in_memory
    assert [train[i]["label"] for i in range(len(train))] == [0] * 4 + [1] * 4 + [2] * 4
    assert not train[0]["image"].flags.writeable  # shared by every read: nobody may change it


def test_folder_cache_switch(root):
    assert data.default_data_config().folder_cache == "auto"
    assert in_memory(root)  # 11 KiB: well under the default limit
    assert in_memory(root, folder_cache="always", folder_cache_max_gib=0.0)
    assert not in_memory(root, folder_cache="never")
    with pytest.raises(ValueError, match=r"folder_cache='yes'; choose one of \('auto'"):
        in_memory(root, folder_cache="yes")


def test_auto_cache_respects_the_memory_limit_counting_each_worker(root):
    assert in_memory(root, folder_cache_max_gib=gib(TRAIN_BYTES))
    assert not in_memory(root, folder_cache_max_gib=gib(TRAIN_BYTES - 1))
    # Each grain worker process holds its own copy: one worker doubles the memory.
    assert not in_memory(root, folder_cache_max_gib=gib(2 * TRAIN_BYTES - 1), num_workers=1)
    assert in_memory(root, folder_cache_max_gib=gib(2 * TRAIN_BYTES), num_workers=1)


def test_cached_folder_reports_corrupt_files_as_the_file_check_does(root):
    bad = root / "train" / "dog" / "002.jpg"
    bad.write_bytes(b"garbage")
    with pytest.raises(folders.CorruptImageError, match=f"cannot read image file {bad}"):
        sources.open_source(folder_config(root, folder_cache="always"), "train")
    train = sources.open_source(
        folder_config(root, folder_cache="always", folder_on_corrupt="skip"), "train"
    )
    assert train.in_memory and len(train) == 11 and train.skipped == (str(bad),)
    np.testing.assert_array_equal(train.labels(), [0] * 4 + [1] * 3 + [2] * 4)
    assert [label_of(train[i]["image"]) for i in range(11)] == train.labels().tolist()
