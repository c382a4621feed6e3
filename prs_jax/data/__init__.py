"""Input pipelines: random-access sources -> per-example host augmentation -> grain batches.

Modules, each importing only those above it:

  specs.py        what every data module shares: DatasetSpec, the normalisation constants and
                  the record format (uint8 RGB at image_size)
  subsets.py      class-balanced, seeded, nested subsets by ratio, from the labels alone
  folders.py      folders of images, ROOT/<split>/<class>/*.jpg|png, read with PIL
  sources.py      TFDS datasets (CIFAR-100, ImageNet, any image classification) and scikit-learn's
                  digits as {'image', 'label'} records
  train_examples.py  the configured train split or its `train_fraction` subset, and its ids
  randaugment.py  RandAugment on uint8 images (timm "rand-mM-nN" semantics, PIL ops)
  augment.py      the per-example recipes (pad-crop or random-resized-crop, flip, RandAugment,
                  normalise, erasing; eval resize + center crop)
  pipeline.py     the train and eval iterators the loop uses, and `default_data_config`

The train iterator is a grain DatasetIterator; save and restore it with orbax through
`grain.checkpoint.CheckpointSave(iterator)` / `grain.checkpoint.CheckpointRestore(iterator)`.
"""

from prs_jax.data.pipeline import (
    DatasetInfo,
    create_eval_iterator,
    create_train_iterator,
    dataset_info,
    default_data_config,
)
from prs_jax.data.sources import DATASETS
from prs_jax.data.train_examples import (
    TRAIN_IDS_FILENAME,
    save_train_example_ids,
    train_example_ids,
)

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "TRAIN_IDS_FILENAME",
    "create_eval_iterator",
    "create_train_iterator",
    "dataset_info",
    "default_data_config",
    "save_train_example_ids",
    "train_example_ids",
]
