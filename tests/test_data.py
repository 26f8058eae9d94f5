"""Tests for bagcert_lib.data: loaders (fake official files, the real JPEG archive, image
folders), location precedence, checksums, cache, augmentation and batching. data is a package:
private names are patched in the submodule that looks them up (D.cache, D.cifar, D.folders)."""

import hashlib
import io
import pathlib
import pickle
import tarfile
import time
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from bagcert_lib import data as D

REPO_ROOT = pathlib.Path(D.__file__).resolve().parent.parent.parent   # bagcert_lib/data/__init__.py
JPEG_CANDIDATES = [
    REPO_ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz",
    REPO_ROOT / "shared" / "datasets" / "cifar10-jpeg.tar.gz",
]
JPEG_ARCHIVE = next((p for p in JPEG_CANDIDATES if p.is_file()), None)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Fresh in-process memo, a private cache dir and no BAGCERT_DATA for every test."""
    monkeypatch.setattr(D.cache, "_MEMO", {})   # where the loaders look it up
    monkeypatch.setenv("BAGCERT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BAGCERT_DATA", raising=False)
    # the fake official files below are not the official ones, whose md5s the loader checks
    # before reading: that check (and the restricted unpickler) is tested in test_faults.py
    monkeypatch.setattr(D.cifar, "_verify", lambda *a: None)


# --------------------------------------------------------------------------------------
# Tiny fake official CIFAR-10 files
# --------------------------------------------------------------------------------------

def fake_batches(seed=0, n_per_train_batch=4, n_test=6):
    """file name -> dict in the official pickled format (images in CHW row order)."""
    rng = np.random.default_rng(seed)
    out = {"batches.meta": {b"label_names": [c.encode() for c in D.CIFAR10_CLASSES], b"num_vis": 3072}}
    for name, n in [*((b, n_per_train_batch) for b in D.CIFAR10_TRAIN_BATCHES), ("test_batch", n_test)]:
        out[name] = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(n)],
        }
    return out


def write_fake_folder(root: pathlib.Path, seed=0) -> pathlib.Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = fake_batches(seed)
    for name, content in batches.items():
        (folder / name).write_bytes(pickle.dumps(content))
    return folder


def fake_tar_bytes(seed=0) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in fake_batches(seed).items():
            raw = pickle.dumps(content)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


def check_matches_fake(d: D.ImageData, seed=0):
    batches = fake_batches(seed)
    train = [batches[b] for b in D.CIFAR10_TRAIN_BATCHES]
    x_train = np.concatenate([b[b"data"] for b in train])
    y_train = np.concatenate([b[b"labels"] for b in train])
    assert d.classes == D.CIFAR10_CLASSES
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (6, 3, 32, 32)
    assert d.x_train.dtype == torch.uint8 and d.y_train.dtype == torch.int64
    assert d.x_train.is_contiguous() and d.x_test.is_contiguous()
    assert d.y_train.tolist() == y_train.tolist()
    assert d.y_test.tolist() == list(batches["test_batch"][b"labels"])
    # CHW mapping: flat index c*1024 + h*32 + w
    for i, c, h, w in [(0, 0, 0, 0), (5, 1, 3, 7), (19, 2, 31, 30), (11, 2, 0, 31)]:
        assert int(d.x_train[i, c, h, w]) == int(x_train[i, c * 1024 + h * 32 + w])
    assert torch.equal(d.x_test.reshape(6, -1), torch.from_numpy(batches["test_batch"][b"data"]))


def test_official_folder(tmp_path):
    folder = write_fake_folder(tmp_path)
    for where in (tmp_path, folder):  # directory containing it, or the folder itself
        d = D.load_cifar10(where, progress=False)
        assert d.name == "cifar10" and d.source == str(folder.resolve())
        check_matches_fake(d)
    info = d.describe()
    assert info == {"name": "cifar10", "source": str(folder.resolve()), "sha256": d.sha256,
                    "n_train": 20, "n_test": 6, "classes": D.CIFAR10_CLASSES}
    assert len(d.sha256) == 64


def test_official_tar(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(fake_tar_bytes())
    for where in (tmp_path, archive):
        d = D.load_cifar10(where, progress=False)
        assert d.name == "cifar10" and d.source == str(archive.resolve())
        assert d.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
        check_matches_fake(d)


def test_folder_preferred_over_tar(tmp_path):
    folder = write_fake_folder(tmp_path, seed=1)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(fake_tar_bytes(seed=2))
    d = D.load_cifar10(tmp_path, progress=False)
    assert d.source == str(folder.resolve())
    check_matches_fake(d, seed=1)


def test_cache_decodes_once(tmp_path, monkeypatch):
    write_fake_folder(tmp_path / "data")
    cache = tmp_path / "mycache"
    d1 = D.load_cifar10(tmp_path / "data", cache_dir=cache, progress=False)
    assert len(list(cache.glob("cifar10-*.npz"))) == 1

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(D.cifar, "_decode_official", boom)
    d2 = D.load_cifar10(tmp_path / "data", cache_dir=cache, progress=False)  # in-process memo
    D.cache._MEMO.clear()
    d3 = D.load_cifar10(tmp_path / "data", cache_dir=cache, progress=False)  # .npz cache
    for d in (d2, d3):
        assert d.sha256 == d1.sha256 and d.classes == d1.classes
        assert torch.equal(d.x_train, d1.x_train) and torch.equal(d.y_test, d1.y_test)
    # a changed source has a different sha256, so the cache does not serve it
    other = tmp_path / "other"
    write_fake_folder(other, seed=5)
    with pytest.raises(AssertionError, match="decoded again"):
        D.load_cifar10(other, cache_dir=cache, progress=False)


# --------------------------------------------------------------------------------------
# Locations and errors
# --------------------------------------------------------------------------------------

def test_resolve_defaults(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    paths = D.resolve_data_path()
    assert paths[0] == (tmp_path / "data").resolve()
    assert pathlib.Path.home().resolve() / ".cache" / "bagcert" / "data" in paths
    assert paths[-2:] == [(REPO_ROOT.parent / "shared" / "datasets").resolve(),
                          (REPO_ROOT / "shared" / "datasets").resolve()]
    monkeypatch.setenv("BAGCERT_DATA", str(tmp_path / "env"))
    assert D.resolve_data_path() == [(tmp_path / "env").resolve()]
    assert D.resolve_data_path(tmp_path / "arg") == [(tmp_path / "arg").resolve()]


def test_precedence(monkeypatch, tmp_path):
    arg_folder = write_fake_folder(tmp_path / "arg", seed=1)
    env_folder = write_fake_folder(tmp_path / "env", seed=2)
    cwd_folder = write_fake_folder(tmp_path / "cwd" / "data", seed=3)
    monkeypatch.chdir(tmp_path / "cwd")
    assert D.load_cifar10(progress=False).source == str(cwd_folder.resolve())
    monkeypatch.setenv("BAGCERT_DATA", str(tmp_path / "env"))
    assert D.load_cifar10(progress=False).source == str(env_folder.resolve())
    d = D.load_cifar10(tmp_path / "arg", progress=False)
    assert d.source == str(arg_folder.resolve())
    check_matches_fake(d, seed=1)


def test_explicit_missing_does_not_fall_back(monkeypatch, tmp_path):
    write_fake_folder(tmp_path / "cwd" / "data")  # a default location that has data
    monkeypatch.chdir(tmp_path / "cwd")
    missing = tmp_path / "nowhere"
    with pytest.raises(D.DataNotFoundError) as err:
        D.load_cifar10(missing, progress=False)
    msg = str(err.value)
    assert str(missing) in msg and "download" in msg and "BAGCERT_DATA" in msg
    assert str(missing / "cifar-10-python.tar.gz") in msg
    assert isinstance(err.value, FileNotFoundError)
    monkeypatch.setenv("BAGCERT_DATA", str(missing))  # an env location does not fall back either
    with pytest.raises(D.DataNotFoundError, match="nowhere"):
        D.load_cifar10(progress=False)


@pytest.mark.parametrize("name", ["cifar-10-python.tar.gz", "cifar10-jpeg.tar.gz"])
def test_corrupt_archive(tmp_path, name):
    (tmp_path / name).write_bytes(b"this is not a gzip file" * 100)
    with pytest.raises(D.DataCorruptError, match=name.replace(".", r"\.")):
        D.load_cifar10(tmp_path, progress=False)


def test_jpeg_checksum_message(tmp_path):
    (tmp_path / "cifar10-jpeg.tar.gz").write_bytes(b"garbage")
    with pytest.raises(D.DataCorruptError) as err:
        D.load_cifar10(tmp_path, progress=False)
    assert D.CIFAR10_JPEG_SHA256 in str(err.value)
    assert hashlib.sha256(b"garbage").hexdigest() in str(err.value)


def test_tar_missing_members(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(buf.getvalue())
    with pytest.raises(D.DataCorruptError, match="data_batch_1"):
        D.load_cifar10(tmp_path, progress=False)


class FakeResponse(io.BytesIO):
    def __init__(self, payload):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def test_download(monkeypatch, tmp_path):
    payload = fake_tar_bytes()
    urls = []

    def fake_urlopen(url, *a, **k):
        urls.append(url)
        return FakeResponse(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    # the real md5 does not match the fake file: clear error, nothing left behind
    with pytest.raises(D.DataCorruptError, match="md5"):
        D.load_cifar10(tmp_path / "root", download=True, progress=False)
    assert urls == [D.CIFAR10_URL]
    assert not list((tmp_path / "root").glob("*"))
    # with the matching md5 the archive is kept and loaded
    monkeypatch.setattr(D.cifar, "CIFAR10_MD5", hashlib.md5(payload).hexdigest())
    d = D.load_cifar10(tmp_path / "root", download=True, progress=False)
    assert (tmp_path / "root" / "cifar-10-python.tar.gz").read_bytes() == payload
    check_matches_fake(d)
    # once present, nothing is downloaded again
    D.load_cifar10(tmp_path / "root", download=True, progress=False)
    assert len(urls) == 2


def test_load_dataset_dispatch(tmp_path):
    write_fake_folder(tmp_path)
    assert D.load_dataset("cifar10", tmp_path, progress=False).name == "cifar10"
    with pytest.raises(ValueError, match="unknown dataset"):
        D.load_dataset("mnist", tmp_path)


# --------------------------------------------------------------------------------------
# Image folder
# --------------------------------------------------------------------------------------

def write_png(path: pathlib.Path, arr: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    imgs = {}
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("zebra", "ant"):  # created out of order: classes must come out sorted
            for i in range(n):
                arr = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
                imgs[(split, cls, i)] = arr
                write_png(tmp_path / split / cls / f"{i:03d}.png", arr)
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    d = D.load_image_folder(tmp_path, progress=False)
    assert d.name == "imagefolder" and d.classes == ["ant", "zebra"]
    assert d.x_train.shape == (6, 3, 6, 8) and d.x_test.shape == (4, 3, 6, 8)
    assert d.y_train.tolist() == [0, 0, 0, 1, 1, 1] and d.y_test.tolist() == [0, 0, 1, 1]
    assert torch.equal(d.x_train[4], torch.from_numpy(imgs[("train", "zebra", 1)]).permute(2, 0, 1))
    assert d.source == str(tmp_path.resolve()) and len(d.sha256) == 64

    small = D.load_image_folder(tmp_path, size=4, progress=False)
    assert small.x_train.shape == (6, 3, 4, 4) and small.sha256 == d.sha256
    rect = D.load_dataset("imagefolder", tmp_path, size=(5, 3), progress=False)
    assert rect.x_test.shape == (4, 3, 5, 3)


def test_image_folder_size_mismatch(tmp_path):
    write_png(tmp_path / "train" / "a" / "0.png", np.zeros((6, 8, 3), np.uint8))
    write_png(tmp_path / "train" / "a" / "1.png", np.zeros((7, 8, 3), np.uint8))
    write_png(tmp_path / "test" / "a" / "0.png", np.zeros((6, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="size"):
        D.load_image_folder(tmp_path, progress=False)
    assert D.load_image_folder(tmp_path, size=(4, 4), progress=False).x_train.shape == (2, 3, 4, 4)


def test_image_folder_missing(tmp_path):
    with pytest.raises(D.DataNotFoundError, match="train"):
        D.load_image_folder(tmp_path / "nothing")


# --------------------------------------------------------------------------------------
# Real JPEG archive (read once per session)
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def jpeg_data(tmp_path_factory):
    if JPEG_ARCHIVE is None:
        pytest.skip(f"offline CIFAR-10 JPEG archive not present (looked at {[str(p) for p in JPEG_CANDIDATES]})")
    cache = tmp_path_factory.mktemp("jpeg-cache")
    start = time.perf_counter()
    d = D.load_cifar10(JPEG_ARCHIVE, cache_dir=cache, progress=False)
    return d, cache, time.perf_counter() - start


@pytest.mark.slow
def test_jpeg_archive(jpeg_data):
    d, cache, first_s = jpeg_data
    assert d.name == "cifar10-jpeg" and d.sha256 == D.CIFAR10_JPEG_SHA256
    assert d.source == str(JPEG_ARCHIVE.resolve())
    assert d.x_train.shape == (50000, 3, 32, 32) and d.x_test.shape == (10000, 3, 32, 32)
    assert d.x_train.dtype == torch.uint8 and d.y_train.dtype == torch.int64
    assert d.x_train.is_contiguous()
    assert torch.bincount(d.y_train).tolist() == [5000] * 10
    assert torch.bincount(d.y_test).tolist() == [1000] * 10
    assert d.y_train[:5000].eq(0).all() and d.y_train[-5000:].eq(9).all()  # class, then file name
    mean = d.x_train.numpy().mean(axis=(0, 2, 3)) / 255
    np.testing.assert_allclose(mean, (0.4913, 0.4821, 0.4465), atol=2e-3)

    # the autouse fixture cleared the memo: served from the .npz, never decoded again (a
    # behavioural check; timing it failed under load)
    def no_decode(*a, **k):
        raise AssertionError("decoded again instead of reading the cache")
    if not list(cache.glob("cifar10-jpeg-*.npz")):   # the fixture's load came from the memo
        D.cache._MEMO.clear()
        D.load_cifar10(JPEG_ARCHIVE, cache_dir=cache, progress=False)
    D.cache._MEMO.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(D.folders, "_decode_images", no_decode)
        again = D.load_cifar10(JPEG_ARCHIVE, cache_dir=cache, progress=False)
        assert len(list(cache.glob("cifar10-jpeg-*.npz"))) == 1
        assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_test, d.y_test)
        for f in cache.glob("cifar10-jpeg-*.npz"):   # now from the in-process memo: no file read
            f.rename(f.with_suffix(".moved"))
        memo = D.load_cifar10(JPEG_ARCHIVE, cache_dir=cache, progress=False)
        assert torch.equal(memo.x_test, d.x_test)


# --------------------------------------------------------------------------------------
# subset
# --------------------------------------------------------------------------------------

def labelled_data(n_per_class=(7, 5, 9), n_test_per_class=(3, 3, 3)):
    def split(counts):
        y = torch.tensor([c for c, n in enumerate(counts) for _ in range(n)])
        y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
        x = torch.arange(len(y), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()
        return x, y

    x_train, y_train = split(n_per_class)
    x_test, y_test = split(n_test_per_class)
    return D.ImageData("toy", "/nowhere", "0" * 64, ["a", "b", "c"], x_train, y_train, x_test, y_test)


def test_subset():
    data = labelled_data()
    s = D.subset(data, n_train=12, n_test=4, seed=3)
    assert torch.bincount(s.y_train, minlength=3).tolist() == [4, 4, 4]
    assert sorted(torch.bincount(s.y_test, minlength=3).tolist()) == [1, 1, 2]
    assert (s.name, s.sha256, s.classes, s.source) == (data.name, data.sha256, data.classes, data.source)
    idx = s.x_train[:, 0, 0, 0].long()  # pixel value = original index
    assert torch.equal(data.y_train[idx], s.y_train) and torch.equal(idx, idx.sort().values)
    assert torch.equal(D.subset(data, 12, 4, seed=3).x_train, s.x_train)
    assert not torch.equal(D.subset(data, 12, 4, seed=4).x_train, s.x_train)
    # a class with too few samples gives its share to the others
    s = D.subset(data, n_train=18)
    assert torch.bincount(s.y_train, minlength=3).tolist() == [7, 5, 6]
    assert len(s.y_test) == 9  # None keeps the split whole


# --------------------------------------------------------------------------------------
# augment and batches
# --------------------------------------------------------------------------------------

def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_augment_flip_only():
    x = torch.rand(64, 3, 8, 8)
    out = D.augment(x, gen(0), pad=0, flip=True)
    assert out.shape == x.shape
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert (same | flipped).all()
    assert same.any() and flipped.any()


@pytest.mark.parametrize("flip", [False, True])
def test_augment_crops_are_windows(flip):
    pad = 2
    x = torch.rand(32, 3, 6, 5)
    out = D.augment(x, gen(1), pad=pad, flip=flip)
    assert out.shape == x.shape
    xp = torch.nn.functional.pad(x, (pad,) * 4)
    offsets = set()
    for i in range(len(x)):
        matches = [(dy, dx, f) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for f in (False, True)
                   if (flip or not f)
                   and torch.equal(out[i], (lambda w: w.flip(-1) if f else w)(xp[i, :, dy:dy + 6, dx:dx + 5]))]
        assert matches, f"sample {i} is not a window of the padded input"
        offsets.add(matches[0][:2])
    assert len(offsets) > 1


def test_augment_deterministic():
    x = torch.rand(16, 3, 8, 8)
    a = D.augment(x, gen(7))
    assert torch.equal(a, D.augment(x, gen(7)))
    assert not torch.equal(a, D.augment(x, gen(8)))
    assert D.augment(x).shape == x.shape  # global RNG without a generator


def test_batches_epoch():
    n, bs = 103, 16
    x = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8)
    y = torch.arange(n)
    seen = []
    out = list(D.batches(x, y, bs, shuffle=True, generator=gen(0)))
    assert len(out) == D.num_batches(n, bs, False) == 7
    for xb, yb in out:
        assert xb.dtype == torch.float32 and yb.dtype == torch.int64
        assert xb.device.type == "cpu" and yb.device.type == "cpu"
        assert 0 <= xb.min() and xb.max() <= 1
        assert torch.equal(xb, x[yb].float() / 255)
        seen += yb.tolist()
    assert sorted(seen) == list(range(n)) and seen != list(range(n))
    same = [yb.tolist() for _, yb in D.batches(x, y, bs, shuffle=True, generator=gen(0))]
    assert sum(same, []) == seen

    plain = [yb for _, yb in D.batches(x, y, bs)]
    assert torch.equal(torch.cat(plain), y)
    dropped = list(D.batches(x, y, bs, shuffle=True, generator=gen(1), drop_last=True))
    assert len(dropped) == D.num_batches(n, bs, True) == 6 and all(len(yb) == bs for _, yb in dropped)


def test_batches_augment_channels_last():
    x = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(20)
    a = list(D.batches(x, y, 8, shuffle=True, generator=gen(2), augment=True, channels_last=True))
    b = list(D.batches(x, y, 8, shuffle=True, generator=gen(2), augment=True, channels_last=True))
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.shape[1:] == (3, 8, 8) and 0 <= xa.min() and xa.max() <= 1
        assert xa.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("augment", [True, False])
def test_batches_from_a_start_are_the_epochs_tail(augment):
    """A run resumed mid-epoch skips the batches it trained on: batch k onwards, augmentation
    included, is exactly what the epoch iterated from the beginning yields there."""
    x = torch.randint(0, 256, (45, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(45)
    kw = dict(shuffle=True, augment=augment, drop_last=False)
    whole = list(D.batches(x, y, 8, generator=gen(3), **kw))
    for start in (1, 3, 5):
        tail = list(D.batches(x, y, 8, generator=gen(3), start=start, **kw))
        assert len(tail) == len(whole) - start
        for (xa, ya), (xb, yb) in zip(whole[start:], tail):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augment_and_batches_on_cuda():
    x = torch.rand(16, 3, 8, 8, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    a = D.augment(x, g)
    assert a.device.type == "cuda" and torch.equal(a, D.augment(x, torch.Generator(device="cuda").manual_seed(0)))
    with pytest.raises(ValueError, match="generator"):
        D.augment(x, gen(0))  # CPU generator for a CUDA tensor
    xu = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(20)
    runs = [list(D.batches(xu, y, 8, shuffle=True, generator=gen(3), device="cuda", augment=True)) for _ in range(2)]
    for (xa, ya), (xb, yb) in zip(*runs):
        assert xa.device.type == "cuda" and ya.device.type == "cuda" and ya.dtype == torch.int64
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
