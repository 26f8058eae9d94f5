"""What every data source shares: :class:`ImageData`, the errors, data locations and
:func:`subset` (App. A.1: the fixed class-balanced subsets)."""
from __future__ import annotations

import dataclasses
import os
import pathlib
from dataclasses import dataclass

import numpy as np
import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp")

# Repository root = parent of the package directory.
_REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent.parent


class DataNotFoundError(FileNotFoundError):
    """No dataset found; the message lists every place looked at and how to get the data."""


class DataCorruptError(RuntimeError):
    """A dataset file is unreadable or its checksum does not match."""


@dataclass
class ImageData:
    """A decoded image classification dataset (uint8 NCHW images, int64 labels)."""

    name: str  # 'cifar10' (official files), 'cifar10-jpeg' or 'imagefolder'
    source: str  # absolute path of the file/folder actually read
    sha256: str  # archive sha256, or sha256 of a sorted (relative path, file sha256) manifest
    classes: list[str]
    x_train: torch.Tensor  # uint8 (N, 3, H, W), contiguous
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor

    def describe(self) -> dict:
        """Provenance record: name, source, sha256, sizes and class names."""
        return {
            "name": self.name,
            "source": self.source,
            "sha256": self.sha256,
            "n_train": int(self.x_train.shape[0]),
            "n_test": int(self.x_test.shape[0]),
            "classes": list(self.classes),
        }


# --------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------

def resolve_data_path(data=None) -> list[pathlib.Path]:
    """Candidate data locations, in order of precedence.

    ``data`` given: only that path. Else env ``BAGCERT_DATA``: only that path. Else the
    defaults ``./data``, ``~/.cache/bagcert/data``, ``<repo_root>/../shared/datasets`` and
    ``<repo_root>/shared/datasets``. An explicit location never falls back to the defaults.
    """
    if data is not None:
        return [pathlib.Path(data).expanduser().resolve()]
    env = os.environ.get("BAGCERT_DATA")
    if env:
        return [pathlib.Path(env).expanduser().resolve()]
    candidates = [
        pathlib.Path.cwd() / "data",
        pathlib.Path.home() / ".cache" / "bagcert" / "data",
        _REPO_ROOT.parent / "shared" / "datasets",
        _REPO_ROOT / "shared" / "datasets",
    ]
    unique = []
    for path in candidates:
        path = path.resolve()
        if path not in unique:
            unique.append(path)
    return unique



def balanced_indices(labels, n, num_classes: int, seed: int = 0, stream: int = 0) -> np.ndarray:
    """Sorted indices of a deterministic class-stratified subset of size ``n`` (as balanced as
    possible; a class with too few samples gives its share to the others)."""
    labels = np.asarray(labels)
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng([seed, stream])
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    quota = [0] * len(per_class)
    remaining = int(n)
    while remaining > 0:  # water-filling: one more per class, in class order, while available
        for c, idx in enumerate(per_class):
            if remaining > 0 and quota[c] < len(idx):
                quota[c] += 1
                remaining -= 1
    chosen = np.concatenate([idx[:q] for idx, q in zip(per_class, quota)])
    return np.sort(chosen)


def subset(data: ImageData, n_train=None, n_test=None, seed=0) -> ImageData:
    """Deterministic class-stratified subset (as balanced as possible, original order kept).

    ``None`` keeps a split whole. The same seed gives the same indices. A streamed dataset
    (:class:`.imagenet.StreamingImages`) subsets its file lists the same way.
    """
    if not isinstance(data, ImageData):
        return data.subset(n_train, n_test, seed)

    def pick(y: torch.Tensor, n, stream: int) -> torch.Tensor:
        return torch.from_numpy(balanced_indices(y.numpy(), n, len(data.classes), seed, stream))

    i_train = pick(data.y_train, n_train, 0)
    i_test = pick(data.y_test, n_test, 1)
    return dataclasses.replace(
        data,
        x_train=data.x_train[i_train].contiguous(),
        y_train=data.y_train[i_train],
        x_test=data.x_test[i_test].contiguous(),
        y_test=data.y_test[i_test],
    )


def test_range(data: ImageData, start: int, stop: int) -> ImageData:
    """The test images ``start`` … ``stop`` − 1 of ``data`` (in its order; training split kept):
    one chunk of a certification that is saved as it goes (:func:`bagcert_lib.runs.certify_run`).
    A streamed dataset slices its file list."""
    if not isinstance(data, ImageData):
        return data.test_range(start, stop)
    return dataclasses.replace(data, x_test=data.x_test[start:stop], y_test=data.y_test[start:stop])
