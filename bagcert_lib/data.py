"""Datasets for BagCert: CIFAR-10 (official files or the offline JPEG copy), image folders,
a decode-once cache, batched GPU-friendly augmentation and a minimal batch iterator.

Sources understood by :func:`load_cifar10`, looked for in each candidate location:

1. the official extracted folder ``cifar-10-batches-py/`` (pickled batches),
2. the official archive ``cifar-10-python.tar.gz`` (read from the tar, never extracted),
3. ``cifar10-jpeg.tar.gz``, a JPEG (quality 75) re-encoding of all 60,000 CIFAR-10 images
   available offline on the project machines (see ``shared/datasets/README.md``). Results
   computed from it must say so: :meth:`ImageData.describe` records name and sha256.

Decoded arrays are cached once per source as an uncompressed ``.npz`` keyed by the
source's sha256, and memoised in-process, so they are never decoded per epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import pathlib
import pickle
import tarfile
import urllib.error
import urllib.request
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_JPEG_SHA256",
    "CIFAR10_MD5",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_URL",
    "DataCorruptError",
    "DataNotFoundError",
    "ImageData",
    "augment",
    "batches",
    "load_cifar10",
    "load_dataset",
    "load_image_folder",
    "num_batches",
    "resolve_data_path",
    "subset",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_FILES = ["batches.meta", *CIFAR10_TRAIN_BATCHES, "test_batch"]

CIFAR10_JPEG_ARCHIVE = "cifar10-jpeg.tar.gz"
CIFAR10_JPEG_SHA256 = "ff26949c34c4e67da3fa472a1f142e33365dea058f94f1fa369b14ef3d986968"

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp")

# Repository root = parent of the package directory.
_REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


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


def _is_official_folder(path: pathlib.Path) -> bool:
    return path.is_dir() and (path / "data_batch_1").is_file() and (path / "test_batch").is_file()


def _find_cifar10_source(location: pathlib.Path, checked: list[str]):
    """Return (kind, path) for the preferred CIFAR-10 source at ``location``, or None.

    kind is 'folder' or 'tar' (official files) or 'jpeg'. Every path examined is
    appended to ``checked``.
    """
    if location.is_file():  # the path of an archive itself
        checked.append(str(location))
        if location.name.startswith("cifar10-jpeg"):
            return "jpeg", location
        return "tar", location
    checked.append(str(location))
    if _is_official_folder(location):  # the path of the extracted folder itself
        return "folder", location
    for kind, name in (("folder", CIFAR10_FOLDER), ("tar", CIFAR10_ARCHIVE), ("jpeg", CIFAR10_JPEG_ARCHIVE)):
        path = location / name
        checked.append(str(path))
        if kind == "folder" and _is_official_folder(path):
            return kind, path
        if kind != "folder" and path.is_file():
            return kind, path
    return None


def _not_found_message(what: str, checked: list[str]) -> str:
    lines = [f"{what} not found. Looked in:"]
    lines += [f"  - {path}" for path in checked]
    lines += [
        "To get CIFAR-10: call load_cifar10(download=True) (or pass download=True to "
        "load_dataset), or download the official archive",
        f"  {CIFAR10_URL}  (md5 {CIFAR10_MD5})",
        "and put it (or its extracted folder cifar-10-batches-py/) in ./data, or point to it "
        "with the `data` argument or the environment variable BAGCERT_DATA.",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Checksums and cache
# --------------------------------------------------------------------------------------

_FILE_HASHES: dict[tuple, str] = {}  # (path, size, mtime_ns) -> sha256, so repeated loads are free
_MEMO: dict[tuple, ImageData] = {}  # in-process memo: (sha256, variant) -> ImageData


def _file_sha256(path: pathlib.Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def _manifest_sha256(root: pathlib.Path, files: list[pathlib.Path]) -> str:
    """sha256 over the sorted lines ``<relative posix path>\\t<file sha256>\\n``."""
    lines = sorted(f"{f.relative_to(root).as_posix()}\t{_file_sha256(f)}\n" for f in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _cache_dir(cache_dir) -> pathlib.Path:
    if cache_dir is not None:
        return pathlib.Path(cache_dir).expanduser()
    env = os.environ.get("BAGCERT_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "bagcert"


def _cached_load(name: str, source: pathlib.Path, sha256: str, variant: str, cache_dir, decode) -> ImageData:
    """Memo -> .npz cache -> ``decode()`` (which returns classes, x_train, y_train, x_test, y_test)."""
    key = (sha256, variant)
    if key in _MEMO:
        return dataclasses.replace(_MEMO[key], source=str(source), classes=list(_MEMO[key].classes))

    cache_file = _cache_dir(cache_dir) / f"{name}-{sha256}{variant}.npz"
    arrays = None
    if cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as npz:
                arrays = (
                    [str(c) for c in npz["classes"]],
                    npz["x_train"], npz["y_train"], npz["x_test"], npz["y_test"],
                )
        except Exception as err:  # a broken cache file is rebuilt, never trusted
            warnings.warn(f"ignoring unreadable cache file {cache_file}: {err}")
            arrays = None
    if arrays is None:
        arrays = decode()
        classes, x_train, y_train, x_test, y_test = arrays
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(cache_file.name + f".tmp{os.getpid()}")
            with open(tmp, "wb") as f:
                np.savez(f, classes=np.array(classes, dtype=str), x_train=x_train,
                         y_train=y_train, x_test=x_test, y_test=y_test)
            os.replace(tmp, cache_file)
        except OSError as err:
            warnings.warn(f"could not write cache file {cache_file}: {err}")

    classes, x_train, y_train, x_test, y_test = arrays
    result = ImageData(
        name=name,
        source=str(source),
        sha256=sha256,
        classes=list(classes),
        x_train=torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.uint8)),
        y_train=torch.from_numpy(np.asarray(y_train, dtype=np.int64)),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.uint8)),
        y_test=torch.from_numpy(np.asarray(y_test, dtype=np.int64)),
    )
    _MEMO[key] = result
    return dataclasses.replace(result, classes=list(classes))


# --------------------------------------------------------------------------------------
# Official CIFAR-10 files
# --------------------------------------------------------------------------------------

def _unpickle(raw: bytes, where: str) -> dict:
    # The official CIFAR-10 format is pickle: only load files you trust.
    try:
        return pickle.loads(raw, encoding="bytes")
    except Exception as err:
        raise DataCorruptError(f"cannot unpickle {where}: {err}") from err


def _decode_official(raw: dict[str, bytes], where: str):
    """raw: file name (e.g. 'data_batch_1') -> bytes. Returns classes and arrays."""
    meta = _unpickle(raw["batches.meta"], f"{where}/batches.meta")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(b"label_names", [])]

    def read(names):
        xs, ys = [], []
        for name in names:
            batch = _unpickle(raw[name], f"{where}/{name}")
            try:
                x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)  # CHW rows
                y = np.asarray(batch[b"labels"], dtype=np.int64)
            except (KeyError, ValueError) as err:
                raise DataCorruptError(f"unexpected content in {where}/{name}: {err!r}") from err
            if len(x) != len(y):
                raise DataCorruptError(f"{where}/{name}: {len(x)} images but {len(y)} labels")
            xs.append(x)
            ys.append(y)
        return np.concatenate(xs), np.concatenate(ys)

    x_train, y_train = read(CIFAR10_TRAIN_BATCHES)
    x_test, y_test = read(["test_batch"])
    return classes or list(CIFAR10_CLASSES), x_train, y_train, x_test, y_test


def _read_official_tar(path: pathlib.Path) -> dict[str, bytes]:
    """Read the needed members from the archive sequentially (gzip cannot seek cheaply)."""
    raw = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                base = pathlib.PurePosixPath(member.name).name
                if member.isfile() and base in CIFAR10_FILES:
                    raw[base] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise DataCorruptError(f"cannot read archive {path}: {err}") from err
    missing = [name for name in CIFAR10_FILES if name not in raw]
    if missing:
        raise DataCorruptError(f"archive {path} lacks CIFAR-10 members {missing}")
    return raw


def _download(url: str, dest: pathlib.Path, md5: str, progress: bool) -> None:
    """Download ``url`` to ``dest`` with a progress bar; verify md5 before keeping it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    digest = hashlib.md5()
    with urllib.request.urlopen(url) as response, open(tmp, "wb") as f:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}", disable=not progress) as bar:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                f.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    if digest.hexdigest() != md5:
        tmp.unlink()
        raise DataCorruptError(
            f"downloaded file from {url} has md5 {digest.hexdigest()}, expected {md5}; it was deleted"
        )
    os.replace(tmp, dest)


# --------------------------------------------------------------------------------------
# JPEG archive and image decoding
# --------------------------------------------------------------------------------------

def _decode_images(blobs: list[bytes], names: list[str], progress: bool, desc: str, size=None) -> np.ndarray:
    """Decode image bytes to a uint8 (N, 3, H, W) array (optionally resized + center-cropped)."""
    out = None
    for i, blob in enumerate(tqdm(blobs, desc=desc, unit="img", disable=not progress)):
        try:
            with Image.open(io.BytesIO(blob)) as img:
                img = img.convert("RGB")
                if size is not None:
                    img = _resize_center_crop(img, size)
                arr = np.asarray(img).transpose(2, 0, 1)  # HWC -> CHW
        except Exception as err:
            raise DataCorruptError(f"cannot decode image {names[i]}: {err}") from err
        if out is None:
            out = np.empty((len(blobs), *arr.shape), dtype=np.uint8)
        if arr.shape != out.shape[1:]:
            raise ValueError(
                f"image {names[i]} has size {arr.shape[1]}x{arr.shape[2]} (HxW) but earlier images are "
                f"{out.shape[2]}x{out.shape[3]}; pass size=(h, w) or size=int to resize and center-crop"
            )
        out[i] = arr
    return out


def _read_jpeg_archive(path: pathlib.Path, progress: bool):
    """Decode ``cifar10-jpeg/{train,test}/<class>/NNNN.jpg`` straight from the tar."""
    blobs = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:  # sequential: gzip cannot seek cheaply
                parts = pathlib.PurePosixPath(member.name).parts
                if member.isfile() and len(parts) == 4 and parts[1] in ("train", "test"):
                    _, split, cls, fname = parts
                    if cls not in CIFAR10_CLASSES:
                        raise DataCorruptError(f"archive {path}: unknown class folder in {member.name}")
                    blobs[(split, CIFAR10_CLASSES.index(cls), fname)] = (member.name, tar.extractfile(member).read())
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise DataCorruptError(f"cannot read archive {path}: {err}") from err

    arrays = []
    for split in ("train", "test"):
        keys = sorted(k for k in blobs if k[0] == split)  # class index, then file name
        if not keys:
            raise DataCorruptError(f"archive {path} has no {split} images")
        names = [blobs[k][0] for k in keys]
        x = _decode_images([blobs[k][1] for k in keys], names, progress, desc=f"decode {split}")
        y = np.array([k[1] for k in keys], dtype=np.int64)
        arrays += [x, y]
    return (list(CIFAR10_CLASSES), *arrays)


# --------------------------------------------------------------------------------------
# Public loaders
# --------------------------------------------------------------------------------------

def load_cifar10(data=None, *, download=False, cache_dir=None, progress=True) -> ImageData:
    """Load CIFAR-10 from the first location in :func:`resolve_data_path` that has it.

    Within a location: official folder, then official tar.gz, then the JPEG archive.
    ``download=True`` fetches the official archive into the first candidate location
    (md5-verified) when no source is found anywhere; it does not replace a JPEG copy that
    was found. Returns name 'cifar10' for official files, 'cifar10-jpeg' for the JPEG copy.
    """
    candidates = resolve_data_path(data)
    checked: list[str] = []
    found = None
    for location in candidates:
        found = _find_cifar10_source(location, checked)
        if found is not None:
            break

    if found is None:
        if not download:
            raise DataNotFoundError(_not_found_message("CIFAR-10", checked))
        root = candidates[0]
        dest = root if root.name.endswith((".tar.gz", ".tgz")) else root / CIFAR10_ARCHIVE
        try:
            _download(CIFAR10_URL, dest, CIFAR10_MD5, progress)
        except (urllib.error.URLError, OSError) as err:
            raise DataNotFoundError(
                _not_found_message("CIFAR-10", checked) + f"\nDownload from {CIFAR10_URL} failed: {err}"
            ) from err
        found = ("tar", dest)

    kind, path = found
    path = path.resolve()
    if kind == "folder":
        files = [path / name for name in CIFAR10_FILES]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataCorruptError(f"CIFAR-10 folder {path} lacks {missing}")
        sha = _manifest_sha256(path, files)
        decode = lambda: _decode_official({f.name: f.read_bytes() for f in files}, str(path))  # noqa: E731
        return _cached_load("cifar10", path, sha, "", cache_dir, decode)
    if kind == "tar":
        sha = _file_sha256(path)
        decode = lambda: _decode_official(_read_official_tar(path), str(path))  # noqa: E731
        return _cached_load("cifar10", path, sha, "", cache_dir, decode)
    # kind == "jpeg"
    sha = _file_sha256(path)
    if sha != CIFAR10_JPEG_SHA256:
        raise DataCorruptError(
            f"{path}: sha256 mismatch, expected {CIFAR10_JPEG_SHA256}, got {sha}"
        )
    decode = lambda: _read_jpeg_archive(path, progress)  # noqa: E731
    return _cached_load("cifar10-jpeg", path, sha, "", cache_dir, decode)


def _parse_size(size):
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def _resize_center_crop(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale (bilinear, aspect kept) so the image just covers (h, w), then center-crop."""
    h, w = size
    scale = max(h / img.height, w / img.width)
    new_w, new_h = max(w, round(img.width * scale)), max(h, round(img.height * scale))
    resample = getattr(Image, "Resampling", Image).BILINEAR
    img = img.resize((new_w, new_h), resample)
    left, top = (new_w - w) // 2, (new_h - h) // 2
    return img.crop((left, top, left + w, top + h))


def _list_images(split_dir: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """class folder name -> sorted image files in it."""
    out = {}
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out[class_dir.name] = sorted(
            p for p in class_dir.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
    return out


def load_image_folder(root, *, size=None, cache_dir=None, progress=True) -> ImageData:
    """Load ``<root>/<split>/<class>/*`` (ImageNet-style) as an :class:`ImageData`.

    Splits: 'train', and 'val' if present else 'test'. Classes are the sorted subfolder
    names of the train split. ``size=(h, w)`` (or an int for a square): each image is
    scaled (bilinear, aspect ratio kept) so that it just covers (h, w) -- for a square size,
    its shorter side becomes the size -- and then center-cropped. Without ``size`` all
    images must already have the same size, else ValueError.
    """
    root = pathlib.Path(root).expanduser().resolve()
    size = _parse_size(size)
    train_dir = root / "train"
    test_dir = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataNotFoundError(
            f"image folder needs {train_dir} and {root / 'val'} or {root / 'test'} "
            f"(layout <root>/<split>/<class>/<image>); looked in {root}"
        )
    train = _list_images(train_dir)
    test = _list_images(test_dir)
    classes = sorted(train)
    unknown = sorted(set(test) - set(classes))
    if not classes:
        raise DataNotFoundError(f"no class folders in {train_dir}")
    if unknown:
        raise ValueError(f"classes {unknown} in {test_dir} do not exist in {train_dir}")

    all_files = [f for split in (train, test) for files in split.values() for f in files]
    sha = _manifest_sha256(root, all_files)
    variant = "" if size is None else f"-{size[0]}x{size[1]}"

    def decode():
        arrays = []
        for split, split_dir in ((train, train_dir), (test, test_dir)):
            files = [f for c in classes for f in split.get(c, [])]
            if not files:
                raise DataNotFoundError(f"no images in {split_dir}")
            labels = [i for i, c in enumerate(classes) for _ in split.get(c, [])]
            names = [str(f) for f in files]
            x = _decode_images([f.read_bytes() for f in files], names, progress, f"decode {split_dir.name}", size)
            arrays += [x, np.array(labels, dtype=np.int64)]
        return (classes, *arrays)

    return _cached_load("imagefolder", root, sha, variant, cache_dir, decode)


def load_dataset(name="cifar10", data=None, **kw) -> ImageData:
    """Dispatch by name: 'cifar10' -> :func:`load_cifar10`, 'imagefolder' -> :func:`load_image_folder`."""
    if name == "cifar10":
        return load_cifar10(data, **kw)
    if name == "imagefolder":
        if data is None:
            raise ValueError("load_dataset('imagefolder') needs data=<root folder>")
        return load_image_folder(data, **kw)
    raise ValueError(f"unknown dataset {name!r}; expected 'cifar10' or 'imagefolder'")


def subset(data: ImageData, n_train=None, n_test=None, seed=0) -> ImageData:
    """Deterministic class-stratified subset (as balanced as possible, original order kept).

    ``None`` keeps a split whole. The same seed gives the same indices.
    """

    def pick(y: torch.Tensor, n, stream: int) -> torch.Tensor:
        if n is None or n >= len(y):
            return torch.arange(len(y))
        rng = np.random.default_rng([seed, stream])
        labels = y.numpy()
        per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(len(data.classes))]
        quota = [0] * len(per_class)
        remaining = int(n)
        while remaining > 0:  # water-filling: one more per class, in class order, while available
            for c, idx in enumerate(per_class):
                if remaining > 0 and quota[c] < len(idx):
                    quota[c] += 1
                    remaining -= 1
        chosen = np.concatenate([idx[:q] for idx, q in zip(per_class, quota)])
        return torch.from_numpy(np.sort(chosen))

    i_train = pick(data.y_train, n_train, 0)
    i_test = pick(data.y_test, n_test, 1)
    return dataclasses.replace(
        data,
        x_train=data.x_train[i_train].contiguous(),
        y_train=data.y_train[i_train],
        x_test=data.x_test[i_test].contiguous(),
        y_test=data.y_test[i_test],
    )


# --------------------------------------------------------------------------------------
# Augmentation and batching (on the tensor's device)
# --------------------------------------------------------------------------------------

def augment(x: torch.Tensor, generator: torch.Generator | None = None, *, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop with ``pad`` zero-padding and random horizontal flip (App. A.1).

    Batched: one ``F.pad`` and one gather; each sample gets its own offset in
    [0, 2*pad] and flip (p=0.5). ``generator`` must be on ``x``'s device type.
    """
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(f"generator is on {generator.device}, but x is on {x.device}")
    b, _, h, w = x.shape
    dev = x.device
    rows = torch.arange(h, device=dev).expand(b, h)
    cols = torch.arange(w, device=dev).expand(b, w)
    if pad > 0:
        x = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator, device=dev)
        dx = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator, device=dev)
        rows = rows + dy
        cols = cols + dx
    if flip:
        flipped = torch.randint(0, 2, (b, 1), generator=generator, device=dev).bool()
        cols = torch.where(flipped, cols.flip(1), cols)
    batch = torch.arange(b, device=dev)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=dev)[None, :, None, None]
    return x[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


_augment = augment  # `batches` has a parameter named `augment`


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """Number of batches :func:`batches` yields for ``n`` samples."""
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def batches(x_uint8, y, batch_size, *, shuffle=False, generator=None, device="cpu",
            augment=False, drop_last=False, channels_last=False):
    """Yield (float32 images in [0, 1], int64 labels) on ``device``, one epoch.

    Shuffling uses ``torch.randperm`` with the CPU ``generator``. With ``augment=True``
    applies :func:`augment` (pad 4, flip; App. A.1) on ``device``; its random numbers come
    from ``generator`` (on a GPU: from a device generator seeded by it).
    """
    device = torch.device(device)
    n = len(x_uint8)
    order = torch.randperm(n, generator=generator) if shuffle else None
    aug_gen = None
    if augment and generator is not None:
        if generator.device.type == device.type:
            aug_gen = generator
        else:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            aug_gen = torch.Generator(device=device).manual_seed(seed)
    for i in range(num_batches(n, batch_size, drop_last)):
        if order is None:
            xb, yb = x_uint8[i * batch_size:(i + 1) * batch_size], y[i * batch_size:(i + 1) * batch_size]
        else:
            idx = order[i * batch_size:(i + 1) * batch_size]
            xb, yb = x_uint8[idx.to(x_uint8.device)], y[idx.to(y.device)]
        xb = xb.to(device, non_blocking=True).float().div_(255)
        yb = yb.to(device, dtype=torch.int64, non_blocking=True)
        if augment:
            xb = _augment(xb, aug_gen, pad=4, flip=True)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yield xb, yb
