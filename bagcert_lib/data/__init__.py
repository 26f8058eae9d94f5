"""Datasets for BagCert (App. A.1), one module per concern:

* :mod:`.core` — :class:`ImageData`, errors, data locations, class-balanced :func:`subset`, a
  chunk of the test split (:func:`test_range`);
* :mod:`.cifar` — CIFAR-10 from the official files or the offline JPEG archive (App. A.1.1);
* :mod:`.folders` — small image folders decoded into memory at one size;
* :mod:`.imagenet` — ImageNet-layout folders streamed through DataLoader workers (App. A.1.2);
* :mod:`.augment` — batched crop + flip and the in-memory batch iterator;
* :mod:`.cache` — the decode-once ``.npz`` cache.

Every public name is re-exported here: ``from bagcert_lib import data; data.load_cifar10(...)``.
"""
from __future__ import annotations

from . import cache, cifar, core, folders
from .augment import augment, batches, num_batches
from .cifar import (CIFAR10_ARCHIVE, CIFAR10_CLASSES, CIFAR10_FILES, CIFAR10_FOLDER,
                    CIFAR10_JPEG_ARCHIVE, CIFAR10_JPEG_SHA256, CIFAR10_MD5, CIFAR10_MEAN,
                    CIFAR10_STD, CIFAR10_TRAIN_BATCHES, CIFAR10_URL, load_cifar10)
from .core import (IMAGE_EXTENSIONS, DataCorruptError, DataNotFoundError, ImageData,
                   balanced_indices, resolve_data_path, subset, test_range)
from .folders import load_image_folder
from .imagenet import (CROP, RESIZE, TRAIN_IMAGES, EpochSampler, FolderDataset, StreamingImages, default_workers,
                       find_imagenet, load_imagenet, preprocess, rescale)

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_JPEG_SHA256",
    "CIFAR10_MD5",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_URL",
    "CROP",
    "DataCorruptError",
    "DataNotFoundError",
    "EpochSampler",
    "FolderDataset",
    "ImageData",
    "RESIZE",
    "StreamingImages",
    "augment",
    "balanced_indices",
    "batches",
    "default_workers",
    "find_imagenet",
    "image_size",
    "load_cifar10",
    "load_dataset",
    "load_image_folder",
    "load_imagenet",
    "num_batches",
    "preprocess",
    "rescale",
    "resolve_data_path",
    "subset",
    "test_range",
]


#: Datasets by name: in memory (cifar10, imagefolder) or streamed from disk (imagenet).
DATASETS = ("cifar10", "imagefolder", "imagenet")


def load_dataset(name="cifar10", data=None, **kw) -> ImageData | StreamingImages:
    """In memory: 'cifar10' -> :func:`load_cifar10`, 'imagefolder' -> :func:`load_image_folder`;
    streamed: 'imagenet' -> :func:`load_imagenet` (any ``train/<class>``, ``val/<class>`` folder)."""
    if name == "imagenet":
        return load_imagenet(data, **kw)
    if name == "cifar10":
        return load_cifar10(data, **kw)
    if name == "imagefolder":
        if data is None:
            raise ValueError("load_dataset('imagefolder') needs data=<root folder>")
        return load_image_folder(data, **kw)
    raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")


def image_size(data) -> tuple[int, int]:
    """(H, W) of the images that reach the model."""
    if isinstance(data, StreamingImages):
        return data.image_size
    return tuple(data.x_test.shape[-2:])
