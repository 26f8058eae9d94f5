"""CIFAR-10 (App. A.1.1), looked for in each candidate location in this order:

1. the official extracted folder ``cifar-10-batches-py/`` (pickled batches),
2. the official archive ``cifar-10-python.tar.gz`` (read from the tar, never extracted),
3. ``cifar10-jpeg.tar.gz``, a JPEG (quality 75) re-encoding of all 60,000 CIFAR-10 images
   for machines that cannot reach the official download (the committed runs used it; the book's
   Reproduce page, "Data"). Results computed from it must say so: :meth:`ImageData.describe`
   records name and sha256.

No input runs code: the official batches are pickles, so each file (or the archive) is checked
against the official md5 before it is read, and read with an unpickler that admits only what the
official files contain (dicts, lists, bytes and str, numbers, numpy arrays). A file that differs
is refused, naming it with the expected and the found hash.
"""
from __future__ import annotations

import hashlib
import io
import os
import pathlib
import pickle
import tarfile
import urllib.error
import urllib.request
import zlib

import numpy as np
from tqdm import tqdm

from . import folders
from .cache import _cached_load, _file_sha256, _manifest_sha256
from .core import DataCorruptError, DataNotFoundError, ImageData, resolve_data_path

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
#: md5 of each file of the official ``cifar-10-batches-py/`` (the archive's is CIFAR10_MD5).
CIFAR10_MD5S = {
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}

CIFAR10_JPEG_ARCHIVE = "cifar10-jpeg.tar.gz"
CIFAR10_JPEG_SHA256 = "ff26949c34c4e67da3fa472a1f142e33365dea058f94f1fa369b14ef3d986968"


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


def _verify(where, found: str, expected: str) -> None:
    """Refuse a file whose md5 is not the official one, before anything reads it."""
    if found != expected:
        raise DataCorruptError(
            f"{where}: md5 {found}, expected {expected} (the official CIFAR-10 file); refused "
            f"unread, since a changed pickle could run code: get the official archive from "
            f"{CIFAR10_URL}")


def _file_md5(path: pathlib.Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct as fn     # numpy >= 2
    except ImportError:                                             # numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


class OfficialUnpickler(pickle.Unpickler):
    """Reads what the official CIFAR-10 batches hold and nothing else: dicts, lists, bytes, str
    and numbers, and numpy arrays (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``,
    ``numpy.dtype``). Any other global — a function a crafted pickle would call — is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch "
                                         "(only numpy arrays, dicts, lists, bytes and numbers)")
        return _reconstruct() if name == "_reconstruct" else getattr(np, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed in a CIFAR-10 batch")


def _unpickle(raw: bytes, where: str) -> dict:
    """One official batch: md5-checked by the caller, then read with :class:`OfficialUnpickler`."""
    try:
        obj = OfficialUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:
        raise DataCorruptError(f"cannot unpickle {where}: {err}") from err
    if not isinstance(obj, dict):
        raise DataCorruptError(f"{where}: holds a {type(obj).__name__}, not a CIFAR-10 batch (a dict)")
    return obj


def _decode_official(raw: dict[str, bytes], where: str):
    """raw: file name (e.g. 'data_batch_1') -> bytes, each checked against its official md5
    before it is unpickled. Returns classes and arrays."""
    for name in CIFAR10_FILES:
        _verify(f"{where}/{name}", hashlib.md5(raw[name]).hexdigest(), CIFAR10_MD5S[name])
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
    """Read the needed members from the archive sequentially (gzip cannot seek cheaply), once
    its md5 is the official archive's."""
    _verify(path, _file_md5(path), CIFAR10_MD5)
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
        x = folders._decode_images([blobs[k][1] for k in keys], names, progress, desc=f"decode {split}")
        y = np.array([k[1] for k in keys], dtype=np.int64)
        arrays += [x, y]
    return (list(CIFAR10_CLASSES), *arrays)



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

