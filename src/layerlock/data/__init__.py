"""Image-classification data: sources, datasets, the model's transforms, DataLoader options.

Modules, from the bottom up:

- :mod:`~layerlock.data.transforms`: the model's own preprocessing (:func:`model_transforms`);
- :mod:`~layerlock.data.datasets`: ImageFolder, CSV, Hugging Face and in-memory datasets,
  and :class:`TrainVal`, the training and evaluation datasets of one task;
- :mod:`~layerlock.data.demo`: the demo task's MNIST digits;
- :mod:`~layerlock.data.sources`: the registry of data sources and :func:`load_train_val`;
- :mod:`~layerlock.data.loading`: DataLoader options (:func:`loader_options`).

Example:
    >>> import timm
    >>> from layerlock.data import load_train_val, model_transforms
    >>> tf = model_transforms(timm.create_model("test_vit"))
    >>> load_train_val("demo", transforms=tf, shots_per_class=5).summary()
    'train 25 images, val 2,475 images, 5 classes'
"""

from .datasets import BAD_IMAGE_POLICIES as BAD_IMAGE_POLICIES
from .datasets import VAL_DIR_NAMES as VAL_DIR_NAMES
from .datasets import ArrayImageDataset as ArrayImageDataset
from .datasets import HFImageDataset as HFImageDataset
from .datasets import ImageDataset as ImageDataset
from .datasets import TrainVal as TrainVal
from .datasets import check_classes as check_classes
from .datasets import csv_dataset as csv_dataset
from .datasets import dataset_len as dataset_len
from .datasets import folder_train_val as folder_train_val
from .datasets import hf_train_val as hf_train_val
from .datasets import image_folder as image_folder
from .loading import loader_options as loader_options
from .loading import resolve_workers as resolve_workers
from .sources import DATA_SOURCES as DATA_SOURCES
from .sources import DataSource as DataSource
from .sources import SourceOptions as SourceOptions
from .sources import data_source as data_source
from .sources import load_train_val as load_train_val
from .transforms import Transform as Transform
from .transforms import Transforms as Transforms
from .transforms import model_transforms as model_transforms
from .transforms import open_clip_preprocess as open_clip_preprocess

# temporary: finetune.py migrates to the new names
Splits = TrainVal
load_splits = load_train_val

__all__ = [
    "BAD_IMAGE_POLICIES",
    "DATA_SOURCES",
    "VAL_DIR_NAMES",
    "ArrayImageDataset",
    "DataSource",
    "HFImageDataset",
    "ImageDataset",
    "SourceOptions",
    "Splits",
    "TrainVal",
    "Transform",
    "Transforms",
    "check_classes",
    "csv_dataset",
    "data_source",
    "dataset_len",
    "folder_train_val",
    "hf_train_val",
    "image_folder",
    "load_splits",
    "load_train_val",
    "loader_options",
    "model_transforms",
    "open_clip_preprocess",
    "resolve_workers",
]
