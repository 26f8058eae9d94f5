"""The decode-once cache: decoded arrays kept as ``.npz`` keyed by the source's sha256, and
memoised in-process, so an in-memory dataset is never decoded per epoch."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import warnings

import numpy as np
import torch

from .core import ImageData

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
