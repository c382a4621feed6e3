"""Deterministic, resumable input pipelines: grain MapDatasets over random-access sources.

Train: source (or its `train_fraction` subset, prs_jax.data.subsets) -> shuffle (a new
permutation each epoch) -> take the epoch's first n / r images, each r times in a row
(repeated augmentation; r = 1: drop the epoch's remainder) -> repeat forever -> augment
(per-example generator from the seed and the example's position in the stream) -> batches of
b = B / P consecutive examples -> this process takes batches p, p + P, ...
So the global batch t is examples [t B, (t + 1) B) of the stream, and process p holds its p-th
b-slice: the same data whatever the number of processes or workers. Everything before
`to_iter_dataset` is index arithmetic, so the iterator state is one integer (grain's
`next_index`) and a restored iterator continues exactly. (That needs grain >= 0.2.13: before
it, a slice of a shuffled, repeated dataset read index % len, so every epoch had epoch 0's order
and the same remainder was never trained on.)

Eval: the whole split once, padded to a multiple of the global batch with mask=False examples,
so every process runs the same number of batches (big_vision's exact evaluation).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import grain
import ml_collections
import numpy as np
from absl import flags

from prs_jax.data import augment, sources, train_examples
from prs_jax.data.specs import DataError

# Thread prefetch inside each process (and each grain worker). An element here is a whole batch,
# and augmentation is mostly GIL-bound Python: a few threads and a short buffer; scale with
# `num_workers` instead (measured on 2 cores: 1-2 threads ~4000 img/s, 16 threads ~3100).
_READ_THREADS = 2
_PREFETCH_BATCHES = 4


def default_data_config() -> ml_collections.ConfigDict:
    """Every `config.data` field the pipeline reads, with its default (the CIFAR-100 recipe)."""
    config = ml_collections.ConfigDict()
    # 'cifar100' | 'digits' | 'image_folder' | a TFDS image-classification name ('imagenet2012').
    config.name = "cifar100"
    # TFDS data directory (None: TFDS's default, $TFDS_DATA_DIR or ~/tensorflow_datasets).
    config.data_dir = ml_collections.config_dict.placeholder(str)
    # TFDS names other than cifar100 (which always does): download and prepare the dataset in
    # data_dir if it is missing. imagenet2012 is built from `manual_dir` (ILSVRC2012_img_*.tar).
    config.download = False
    config.manual_dir = ml_collections.config_dict.placeholder(str)
    # Where the train split's labels are cached for subsets (None: next to the TFDS files).
    config.label_cache_dir = ml_collections.config_dict.placeholder(str)
    # image_folder: ROOT/<train_split>/<class>/*.jpg|png and ROOT/<eval_split>/<class>/*, or
    # a class-balanced `folder_validation_fraction` of train as the eval split.
    config.folder_root = ml_collections.config_dict.placeholder(str)
    config.folder_validation_fraction = 0.0
    config.folder_on_corrupt = "raise"  # 'raise': error naming the file | 'skip': leave out, count
    config.image_size = 32  # images are resized to this (PIL bicubic, as DeiT) if they differ
    config.train_split = "train"  # TFDS split syntax ('train[:90%]'); digits: 'train' | 'test'
    config.eval_split = "test"  # always evaluated whole
    # Train on a class-balanced subset: the first round(r * n_c) of a permutation of each class,
    # seeded by subset_seed (not config.seed: runs with other seeds see the same examples), so
    # smaller ratios are nested in larger ones. The ids are saved in the workdir.
    config.train_fraction = 1.0
    config.subset_seed = 0
    # 'imagenet': ImageNet's mean and std for every dataset, as DeiT and ConViT normalise (their
    # CIFAR runs included); 'dataset': the dataset's own train statistics where they are known
    # (cifar100, digits), else ImageNet's.
    config.normalization = "imagenet"
    # Repeated augmentation (DeiT's RASampler, Hoffer et al. 2020): each epoch shows ceil(L / r)
    # images of its permutation r times in a row, each copy augmented anew, so the copies share
    # a global batch and the epoch keeps its L = steps_per_epoch * batch examples. 1 is off;
    # DeiT and ConViT on ImageNet: 3.
    config.repeated_augmentation = 1
    # Train augmentation (DeiT's recipes); 0 / False / 0.0 skips a step.
    # 'pad_crop': a random image_size crop after zero padding by crop_padding (CIFAR);
    # 'random_resized_crop': RandomResizedCrop(image_size, scale=(crop_min_scale, 1)) (ImageNet).
    config.train_crop = "pad_crop"
    config.crop_padding = 4
    config.crop_min_scale = 0.08
    # Eval: 'none' (images resized to image_size) or 'resize_center_crop' (shorter side to
    # image_size / eval_crop_pct, then the central image_size square: 256 -> 224).
    config.eval_crop = "none"
    config.eval_crop_pct = 0.875
    config.random_flip = True  # horizontal flip with probability 1/2
    config.randaugment_num_ops = 2  # timm "rand-m9-n2"; 0 disables RandAugment
    config.randaugment_magnitude = 9.0  # in [0, 10]
    config.randaugment_magnitude_std = 0.0  # timm "mstd" (DeiT: 0.5)
    config.randaugment_increasing = False  # timm "inc1" op variants (DeiT: True)
    config.random_erasing_prob = 0.25  # timm RandomErasing, mode 'pixel', after normalisation
    # image_folder: keep the decoded images in memory, decoded once when the folder is scanned
    # (prs_jax.data.folders). 'auto': when they fit in folder_cache_max_gib, counting one copy
    # per process (the main one and each grain worker) | 'always' | 'never' (decode each read).
    config.folder_cache = "auto"
    config.folder_cache_max_gib = 4.0
    # Host parallelism: grain worker processes (0 = in-process, threads only; the test default).
    # Keep it fixed across a resume: the iterator state records the worker layout.
    config.num_workers = 0
    return config


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Sizes the train loop needs before it sees any data."""

    name: str
    num_classes: int
    num_train_examples: int
    num_eval_examples: int
    image_size: int


def dataset_info(data_config: ml_collections.ConfigDict) -> DatasetInfo:
    """Counts the examples of the configured splits; num_train_examples is the subset's size.

    Opens both sources and reads no image; with train_fraction < 1 it reads the train labels.
    """
    spec = sources.dataset_spec(data_config)
    _check_crops(data_config)
    return DatasetInfo(
        name=data_config.name,
        num_classes=spec.num_classes,
        num_train_examples=len(train_examples.train_source(data_config)),
        num_eval_examples=len(sources.open_source(data_config, data_config.eval_split)),
        image_size=data_config.image_size,
    )


def _check_crops(data_config: ml_collections.ConfigDict) -> None:
    if data_config.train_crop not in augment.TRAIN_CROPS:
        raise DataError(
            f"config.data.train_crop={data_config.train_crop!r}; choose one of"
            f" {augment.TRAIN_CROPS}"
        )
    if data_config.eval_crop not in augment.EVAL_CROPS:
        raise DataError(
            f"config.data.eval_crop={data_config.eval_crop!r}; choose one of {augment.EVAL_CROPS}"
        )


def _per_process_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of"
            f" process_count={process_count}"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    return global_batch_size // process_count


def _to_iterator(dataset: grain.MapDataset, num_workers: int) -> grain.IterDataset:
    iter_dataset = dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=_READ_THREADS, prefetch_buffer_size=_PREFETCH_BATCHES)
    )
    if num_workers > 0:
        # grain's worker processes read absl flags; outside absl.app (tests, notebooks) they are
        # unparsed, and grain then fails: use the flag defaults there.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers)
        )
    return iter_dataset


def create_train_iterator(
    data_config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.DatasetIterator:
    """An endless, checkpointable iterator of this process's slice of each global train batch.

    Yields {'image': float32[b, S, S, 3], 'label': int32[b]}, b = global_batch_size /
    process_count. Each epoch is a fresh permutation of the split with the last
    `len % global_batch_size` examples dropped (with repeated_augmentation r: its first
    ceil(L / r) images, r copies each); the same seed and step give the same batch.
    """
    batch_size = _per_process_batch_size(global_batch_size, process_index, process_count)
    mean, std = sources.normalization(data_config)
    _check_crops(data_config)
    repeats = data_config.get("repeated_augmentation", 1)
    if not isinstance(repeats, int) or repeats < 1:
        raise DataError(f"config.data.repeated_augmentation={repeats!r}; must be an integer >= 1")
    crop = data_config.train_crop
    source = train_examples.train_source(data_config, native_size=crop == "random_resized_crop")
    steps_per_epoch = len(source) // global_batch_size
    if steps_per_epoch == 0:
        raise DataError(
            f"global_batch_size={global_batch_size} exceeds the {len(source)} examples of"
            f" {data_config.name}:{data_config.train_split} (train_fraction="
            f"{data_config.train_fraction})"
        )
    # Two independent 32-bit seeds; grain's shuffle uses seed + epoch for each epoch, so hashing
    # keeps nearby user seeds (0, 1, ...) from sharing epochs.
    shuffle_seed, augment_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    transform = functools.partial(
        augment.train_example,
        mean=mean,
        std=std,
        crop=crop,
        image_size=data_config.image_size,
        crop_min_scale=data_config.crop_min_scale,
        crop_padding=data_config.crop_padding,
        random_flip=data_config.random_flip,
        randaugment_num_ops=data_config.randaugment_num_ops,
        randaugment_magnitude=data_config.randaugment_magnitude,
        randaugment_magnitude_std=data_config.randaugment_magnitude_std,
        randaugment_increasing=data_config.randaugment_increasing,
        random_erasing_prob=data_config.random_erasing_prob,
    )
    epoch_length = steps_per_epoch * global_batch_size  # full global batches only
    # Slices and repeats keep epochs aligned: index e * len + i is epoch e's i-th element, so
    # epoch e reads the shuffle of epoch e.
    dataset = (
        grain.MapDataset.source(source)
        .shuffle(seed=shuffle_seed)
        .slice(slice(0, math.ceil(epoch_length / repeats)))
    )
    if repeats > 1:
        dataset = _RepeatEach(dataset, repeats, epoch_length)
    dataset = (
        dataset.repeat(None)
        .random_map(transform, seed=augment_seed)  # generator from (seed, stream position)
        .batch(batch_size, drop_remainder=True)
        .slice(slice(process_index, None, process_count))
    )
    return iter(_to_iterator(dataset, data_config.num_workers))


class _RepeatEach(grain.MapDataset):
    """Each epoch of `parent` with every element `repeats` times in a row, cut to `epoch_length`
    (the last element may get fewer copies): position e * epoch_length + j reads element j //
    repeats of the parent's epoch e, index arithmetic like grain's slice. Our own because grain's
    one-to-many op (FlatMapMapDataset) may drop elements, so `batch` refuses to follow it."""

    def __init__(self, parent: grain.MapDataset, repeats: int, epoch_length: int):
        super().__init__(parent)
        self._repeats, self._epoch_length = repeats, epoch_length

    def __len__(self) -> int:
        return self._epoch_length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, position = divmod(index, self._epoch_length)
        return self._parent[epoch * len(self._parent) + position // self._repeats]


def _padding_example(image_size: int) -> dict[str, np.ndarray]:
    return {
        "image": np.zeros((image_size, image_size, 3), np.float32),
        "label": np.int32(0),
        "mask": np.bool_(False),
    }


def create_eval_iterator(
    data_config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """The eval split once, in order, as this process's slices of ceil(n / B) global batches.

    Yields {'image': float32[b, S, S, 3], 'label': int32[b], 'mask': bool[b]}; the padding that
    fills the last global batch has mask False (and a zero image, label 0). Iterate it again for
    another pass.
    """
    batch_size = _per_process_batch_size(global_batch_size, process_index, process_count)
    mean, std = sources.normalization(data_config)
    _check_crops(data_config)
    crop = data_config.eval_crop
    source = sources.open_source(
        data_config, data_config.eval_split, native_size=crop == "resize_center_crop"
    )
    num_batches = math.ceil(len(source) / global_batch_size)
    num_padding = num_batches * global_batch_size - len(source)
    dataset = grain.MapDataset.source(source).map(
        functools.partial(
            augment.eval_example,
            mean=mean,
            std=std,
            crop=crop,
            image_size=data_config.image_size,
            crop_pct=data_config.eval_crop_pct,
        )
    )
    if num_padding:
        padding = grain.MapDataset.source([_padding_example(data_config.image_size)] * num_padding)
        dataset = grain.MapDataset.concatenate([dataset, padding])
    dataset = dataset.batch(batch_size, drop_remainder=True).slice(
        slice(process_index, None, process_count)
    )
    return _to_iterator(dataset, data_config.num_workers)
