"""ImageNet (App. A.1.2) streamed from ``<root>/{train,val}/<wnid>/*.JPEG``, never held in memory.

Preprocessing as App. A.1.2: the shorter side is rescaled to 256 px, then a random 224x224 crop
and a horizontal flip (p = 0.5) for training, the centre 224x224 crop for testing. Images are
decoded by torchvision in DataLoader workers; batches arrive as float (B, 3, 224, 224) in [0, 1]
with int64 labels, like the in-memory CIFAR batches (:func:`.augment.batches`).

Order and augmentation come from the seed alone: the sampler draws the epoch's order from a
generator seeded with the epoch seed and hands every image its own seed (epoch seed, index), so
the batches do not depend on the number of workers and a resumed run equals an uninterrupted one.
Any folder with the same layout works (``val`` may be called ``test``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .core import IMAGE_EXTENSIONS, DataCorruptError, DataNotFoundError, balanced_indices, resolve_data_path

RESIZE = 256  # App. A.1.2: shorter side
CROP = 224    # App. A.1.2: random (train) or centre (test) crop
#: Images of ImageNet's (ILSVRC-2012) training split.
TRAIN_IMAGES = 1_281_167


def default_workers(device="cpu") -> int:
    """DataLoader workers when the config says None: on a GPU cores - 1, at most 8 (one core stays
    with the training process; the book's Reproduce page, "ImageNet"); on a CPU 0, since one in-process loader feeds
    hundreds of training threads (benchmarks/imagenet_loader.py)."""
    if torch.device(device).type == "cpu":
        return 0
    return min(8, max(0, (os.cpu_count() or 1) - 1))


# --------------------------------------------------------------------------------------
# Decoding and the App. A.1.2 transforms (torchvision.transforms.v2 on uint8 CHW tensors)
# --------------------------------------------------------------------------------------

# torchvision 0.29 marks its decoders deprecated in favour of TorchCodec; they still work and are
# what this loader uses. Said once here, not once per image; PIL takes over if they disappear.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


def decode(path: str) -> torch.Tensor:
    """uint8 (3, H, W) RGB with torchvision.io; PIL for what it cannot read (CMYK, odd PNGs)."""
    try:
        from torchvision.io import ImageReadMode, decode_image, read_file

        return decode_image(read_file(path), mode=ImageReadMode.RGB)
    except (ImportError, RuntimeError, ValueError):
        from PIL import Image

        try:
            with Image.open(path) as img:
                arr = np.asarray(img.convert("RGB"))
        except Exception as err:
            raise DataCorruptError(f"cannot decode image {path}: {err}") from err
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def rescale(img: torch.Tensor, resize: int = RESIZE) -> torch.Tensor:
    """Shorter side to ``resize``, aspect ratio kept (bilinear, antialiased; App. A.1.2)."""
    from torchvision.transforms.v2 import functional as TF

    return TF.resize(img, [resize], antialias=True)


def preprocess(img: torch.Tensor, train: bool, generator: torch.Generator | None = None,
               resize: int = RESIZE, crop: int = CROP, flip: bool = True) -> torch.Tensor:
    """App. A.1.2 on a uint8 (3, H, W) image: :func:`rescale`, then a random ``crop`` + flip
    (``train``; from ``generator``) or the centre crop."""
    from torchvision.transforms.v2 import functional as TF

    img = rescale(img, resize)
    if not train:
        return TF.center_crop(img, [crop, crop])
    h, w = img.shape[-2:]
    top = int(torch.randint(0, h - crop + 1, (), generator=generator))
    left = int(torch.randint(0, w - crop + 1, (), generator=generator))
    img = TF.crop(img, top, left, crop, crop)
    if flip and bool(torch.rand((), generator=generator) < 0.5):
        img = TF.horizontal_flip(img)
    return img


def sample_seed(epoch_seed: int, index: int) -> int:
    """The seed of one image's crop and flip in one epoch."""
    return (int(epoch_seed) * 10_000_019 + int(index)) % (1 << 63)


class FolderDataset(Dataset):
    """One split: item ``(index, seed)`` -> (uint8 (3, crop, crop), label). Paths are a numpy
    bytes array, so forked workers share them without copy-on-write growth."""

    def __init__(self, root: str, files: np.ndarray, labels: np.ndarray, train: bool,
                 resize: int = RESIZE, crop: int = CROP, flip: bool = True):
        self.root, self.files, self.labels = root, files, labels
        self.train, self.resize, self.crop, self.flip = train, resize, crop, flip

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, 0)
        img = decode(os.path.join(self.root, self.files[index].decode()))
        gen = torch.Generator().manual_seed(seed) if self.train else None
        x = preprocess(img, self.train, gen, self.resize, self.crop, self.flip)
        return x, int(self.labels[index])


class EpochSampler(Sampler):
    """Yields ``(index, seed)`` over ``indices``: shuffled by a generator seeded with
    ``epoch_seed`` (or in order), each image with :func:`sample_seed`. ``start``: leave out the
    order's first ``start`` images (a run resumed mid-epoch; the rest are unchanged)."""

    def __init__(self, indices: np.ndarray, epoch_seed: int, shuffle: bool, start: int = 0):
        self.indices, self.epoch_seed, self.shuffle = np.asarray(indices), int(epoch_seed), shuffle
        self.start = int(start)

    def __len__(self) -> int:
        return max(0, len(self.indices) - self.start)

    def __iter__(self):
        n = len(self.indices)
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(self.epoch_seed)).numpy()
                 if self.shuffle else np.arange(n))
        for j in order[self.start:]:
            i = int(self.indices[j])
            yield i, sample_seed(self.epoch_seed, i)


# --------------------------------------------------------------------------------------
# The dataset: file lists only
# --------------------------------------------------------------------------------------

def _scan(split_dir: pathlib.Path, classes: list[str] | None):
    """Sorted (class, file) listing of one split: relative paths (bytes), labels, manifest lines."""
    found = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    classes = classes or found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f"classes {unknown[:5]} in {split_dir} do not exist in the train split")
    files, labels, manifest = [], [], hashlib.sha256()
    for label, cls in enumerate(classes):
        if cls not in found:
            continue
        entries = sorted((e for e in os.scandir(split_dir / cls)
                          if e.is_file() and not e.name.startswith(".")
                          and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS),
                         key=lambda e: e.name)
        for e in entries:
            rel = f"{split_dir.name}/{cls}/{e.name}"
            files.append(rel.encode())
            labels.append(label)
            manifest.update(f"{rel}\t{e.stat().st_size}\n".encode())
    if not files:
        raise DataNotFoundError(f"no images in {split_dir}")
    return classes, np.array(files), np.array(labels, dtype=np.int64), manifest.hexdigest()


@dataclass
class StreamingImages:
    """An ImageNet-layout folder as file lists (the images stay on disk). Mirrors
    :class:`.core.ImageData`: ``y_train``/``y_test``, :meth:`describe`, :meth:`subset`."""

    name: str
    source: str
    sha256: str            # of the sorted manifest "<split>/<class>/<file>\t<bytes>" (not contents)
    classes: list[str]
    train_files: np.ndarray
    y_train: torch.Tensor
    test_files: np.ndarray
    y_test: torch.Tensor
    resize: int = RESIZE
    crop: int = CROP

    @property
    def image_size(self) -> tuple[int, int]:
        """(crop, crop): the size of every image the model sees."""
        return (self.crop, self.crop)

    def describe(self) -> dict:
        """What provenance.json records about the dataset (its file list's sha256, sizes, preprocessing)."""
        return {"name": self.name, "source": self.source, "sha256": self.sha256,
                "sha256_of": "sorted relative paths and file sizes", "streamed": True,
                "preprocess": f"shorter side {self.resize}, {self.crop}x{self.crop} crop (App. A.1.2)",
                "n_train": len(self.y_train), "n_test": len(self.y_test), "classes": list(self.classes)}

    def subset(self, n_train=None, n_test=None, seed=0) -> "StreamingImages":
        """Class-balanced fixed subsets, as :func:`.core.subset`."""
        i = balanced_indices(self.y_train.numpy(), n_train, len(self.classes), seed, 0)
        j = balanced_indices(self.y_test.numpy(), n_test, len(self.classes), seed, 1)
        return dataclasses.replace(self, train_files=self.train_files[i], y_train=self.y_train[i],
                                   test_files=self.test_files[j], y_test=self.y_test[j])

    def test_range(self, start: int, stop: int) -> "StreamingImages":
        """The test files ``start`` … ``stop`` − 1, as :func:`.core.test_range`."""
        return dataclasses.replace(self, test_files=self.test_files[start:stop],
                                   y_test=self.y_test[start:stop])

    def dataset(self, split: str, train: bool) -> FolderDataset:
        """The :class:`FolderDataset` of ``split`` (train or test), with the training transform if ``train``."""
        files, y = (self.train_files, self.y_train) if split == "train" else (self.test_files, self.y_test)
        return FolderDataset(self.source, files, y.numpy(), train, self.resize, self.crop)

    def batches(self, split: str, batch_size: int, *, augment: bool = False, shuffle: bool = False,
                epoch_seed: int = 0, device="cpu", workers: int | None = 0, drop_last: bool = False,
                channels_last: bool = False, start: int = 0):
        """One epoch of ``split`` ('train' or 'test') as float [0, 1] batches on ``device``.
        ``augment``: random crop + flip; else the centre crop. ``start``: skip the first
        ``start`` batches (each image's crop is seeded by itself, so the rest are unchanged)."""
        device = torch.device(device)
        workers = default_workers(device) if workers is None else int(workers)
        ds = self.dataset(split, augment)
        sampler = EpochSampler(np.arange(len(ds)), epoch_seed, shuffle, start=start * batch_size)
        loader = DataLoader(ds, batch_size=batch_size, sampler=sampler,
                            num_workers=workers, drop_last=drop_last, pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(int(epoch_seed)),
                            prefetch_factor=4 if workers else None)
        for xb, yb in loader:
            xb = xb.to(device, non_blocking=True).float().div_(255)
            yb = yb.to(device, dtype=torch.int64, non_blocking=True)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yield xb, yb


def find_imagenet(data=None) -> pathlib.Path:
    """The first candidate location (:func:`.core.resolve_data_path`) that is, or holds an
    ``imagenet/`` folder that is, ``<root>/train`` plus ``<root>/val`` (or ``test``)."""
    checked = []
    for location in resolve_data_path(data):
        for root in (location, location / "imagenet"):
            checked.append(str(root))
            if (root / "train").is_dir() and ((root / "val").is_dir() or (root / "test").is_dir()):
                return root
    raise DataNotFoundError(
        "ImageNet not found. Looked for <root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG in:\n"
        + "\n".join(f"  - {p}" for p in checked)
        + "\nGet ILSVRC2012 from https://image-net.org (train and val archives), extract it and sort "
          "val into one folder per wnid; pass the root with --data or $BAGCERT_DATA.")


def load_imagenet(data=None, *, progress: bool = True, **_) -> StreamingImages:
    """List an ImageNet-layout folder (App. A.1.2); nothing is decoded until batches are drawn."""
    root = find_imagenet(data).resolve()
    test_dir = root / "val" if (root / "val").is_dir() else root / "test"
    if progress:
        print(f"listing {root} ...", flush=True)
    classes, train_files, y_train, sha_train = _scan(root / "train", None)
    _, test_files, y_test, sha_test = _scan(test_dir, classes)
    sha = hashlib.sha256(f"{sha_train}\n{sha_test}\n".encode()).hexdigest()
    return StreamingImages("imagenet", str(root), sha, classes, train_files, torch.from_numpy(y_train),
                           test_files, torch.from_numpy(y_test))
