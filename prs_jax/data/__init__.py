"""Input pipelines: random-access sources -> per-example host augmentation -> grain batches.

  sources.py      TFDS CIFAR-100 and scikit-learn's digits as {'image', 'label'} records
  randaugment.py  RandAugment on uint8 images (timm "rand-mM-nN" semantics, PIL ops)
  augment.py      the per-example train recipe (crop, flip, RandAugment, normalise, erasing)
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

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "create_eval_iterator",
    "create_train_iterator",
    "dataset_info",
    "default_data_config",
]
