"""ImageNet as App. A.1.2 runs it: the streamed folder, its transforms, the imagenet
profile, training RF 17 end to end at 224 px (one CLI command), certifying 32x32 patches,
resuming, and memory that does not grow with the number of images."""
import json
import pathlib

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bagcert_lib import data as D
from bagcert_lib import train as train_mod
from bagcert_lib.config import grids, profile_config
from bagcert_lib.model import IMAGENET_KERNELS

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")   # torchvision 0.29

SIZES = [(40, 300), (300, 60), (257, 256), (375, 500)]   # (H, W): varied sizes and aspect ratios


def write_folder(root: pathlib.Path, n_train=4, n_val=2, classes=3, sizes=SIZES, seed=0):
    """``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``; class c is a tint of channel c."""
    rng = np.random.default_rng(seed)
    k = 0
    for split, n in (("train", n_train), ("val", n_val)):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = sizes[k % len(sizes)]
                k += 1
                img = rng.uniform(0, 0.45, (h, w, 3))
                img[..., c] += rng.uniform(0.35, 0.55)
                Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(
                    d / f"n{c:08d}_{i}.JPEG", quality=85)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = write_folder(tmp_path_factory.mktemp("imagenet"))
    cmyk = Image.new("CMYK", (120, 90), (10, 200, 30, 0))     # ImageNet has a few CMYK JPEGs
    cmyk.save(root / "train" / "n00000002" / "cmyk.JPEG")
    (root / "train" / "n00000000" / "notes.txt").write_text("not an image")
    return root


def test_listing(folder):
    ds = D.load_imagenet(folder, progress=False)
    assert isinstance(ds, D.StreamingImages) and ds.name == "imagenet"
    assert ds.classes == ["n00000000", "n00000001", "n00000002"]
    assert len(ds.y_train) == 13 and len(ds.y_test) == 6
    assert ds.y_train.dtype == torch.int64 and ds.y_train.tolist() == [0] * 4 + [1] * 4 + [2] * 5
    assert ds.train_files[0].decode() == "train/n00000000/n00000000_0.JPEG"
    info = ds.describe()
    assert (info["n_train"], info["n_test"], info["streamed"], len(info["sha256"])) == (13, 6, True, 64)
    assert D.load_dataset("imagenet", folder, progress=False).sha256 == ds.sha256
    assert D.image_size(ds) == (224, 224)
    sub = D.subset(ds, n_train=6, n_test=3)                 # class-balanced, as in memory
    assert torch.bincount(sub.y_train).tolist() == [2, 2, 2] and sub.y_test.tolist() == [0, 1, 2]
    assert D.find_imagenet(folder) == folder.resolve()
    with pytest.raises(D.DataNotFoundError, match="train/<wnid>"):
        D.load_imagenet(folder / "nowhere")


def test_transforms(folder):
    """Every size and aspect ratio: shorter side 256 (aspect kept), 224 crops, the test crop is the
    centre and deterministic, the train crop is a function of the seed."""
    ds = D.load_imagenet(folder, progress=False)
    train_set, test_set = ds.dataset("train", train=True), ds.dataset("test", train=False)
    for i in range(len(train_set)):
        img = D.imagenet.decode(str(folder / train_set.files[i].decode()))
        assert img.dtype == torch.uint8 and img.shape[0] == 3          # the CMYK one too
        big = D.rescale(img)
        (h, w), (h0, w0) = big.shape[-2:], img.shape[-2:]
        assert min(h, w) == 256 and abs(max(h, w) - 256 * max(h0, w0) / min(h0, w0)) <= 1
        centre = D.preprocess(img, train=False)
        top, left = round((h - 224) / 2), round((w - 224) / 2)
        assert centre.shape == (3, 224, 224)
        assert torch.equal(centre, big[:, top:top + 224, left:left + 224])
        assert torch.equal(centre, D.preprocess(img, train=False))
        crops = [D.preprocess(img, True, torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
        assert crops[0].shape == (3, 224, 224) and torch.equal(crops[0], crops[1])
        x, y = train_set[(i, 5)]
        assert torch.equal(x, D.preprocess(img, True, torch.Generator().manual_seed(5)))
        assert y == int(ds.y_train[i])
    for i in range(len(test_set)):              # the test split: never flipped, never shifted
        assert torch.equal(test_set[(i, 1)][0], test_set[(i, 2)][0])


def test_flip_and_crop_only_in_train():
    """On a 256 x 300 image (rescaling leaves it alone) the train output is exactly the window and
    flip the seed draws; the test output is the centre window, unflipped."""
    img = torch.arange(3 * 256 * 300).remainder(251).to(torch.uint8).view(3, 256, 300)
    assert torch.equal(D.rescale(img), img)
    windows, flips = set(), 0
    for s in range(40):
        out = D.preprocess(img, True, torch.Generator().manual_seed(s))
        g = torch.Generator().manual_seed(s)
        top = int(torch.randint(0, 256 - 224 + 1, (), generator=g))
        left = int(torch.randint(0, 300 - 224 + 1, (), generator=g))
        flip = bool(torch.rand((), generator=g) < 0.5)
        want = img[:, top:top + 224, left:left + 224]
        assert torch.equal(out, want.flip(-1) if flip else want)
        windows.add((top, left))
        flips += flip
    assert len(windows) > 20 and 5 < flips < 35
    assert torch.equal(D.preprocess(img, train=False), img[:, 16:240, 38:262])


def test_batches_seeded_and_worker_independent(folder):
    ds = D.load_imagenet(folder, progress=False)
    kw = dict(augment=True, shuffle=True, epoch_seed=7, drop_last=True)
    a = list(ds.batches("train", 4, workers=0, **kw))
    b = list(ds.batches("train", 4, workers=1, **kw))
    assert len(a) == 3
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.dtype == torch.float32 and xa.shape == (4, 3, 224, 224) and ya.dtype == torch.int64
        assert 0 <= xa.min() and xa.max() <= 1
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = list(ds.batches("train", 4, workers=0, **{**kw, "epoch_seed": 8}))
    assert not all(torch.equal(x, y) for (x, _), (y, _) in zip(a, other))
    test = [y for _, y in ds.batches("test", 4, channels_last=True)]
    assert torch.cat(test).tolist() == ds.y_test.tolist()
    tail = list(ds.batches("train", 4, workers=0, start=1, **kw))     # resumed mid-epoch
    assert len(tail) == 2
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a[1:], tail))


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise OSError


@pytest.mark.skipif(not pathlib.Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_memory_does_not_grow_with_the_folder(tmp_path):
    """Streaming holds a few batches, never the set: iterating 200 images peaks no higher than 20
    (holding them would take 200 x 224 x 224 x 3 x 4 B = 120 MB more)."""
    growth = {}
    for n in (20, 200, 20):
        root = write_folder(tmp_path / f"n{n}-{len(growth)}", n_train=1, n_val=n // 2, classes=2,
                            sizes=[(48, 64), (64, 40)])
        ds = D.load_imagenet(root, progress=False)
        base, peak = _rss_mb(), 0.0
        for x, y in ds.batches("test", 10, workers=0):
            peak = max(peak, _rss_mb())
        assert len(ds.y_test) == n
        growth[n] = max(growth.get(n, 0.0), peak - base)
    assert growth[200] < growth[20] + 15, growth


def test_imagenet_profile_is_appendix_a12():
    cfg = profile_config("imagenet")
    assert cfg.dataset == "imagenet" and cfg.rf == 17 and cfg.head == "heaviside"
    assert cfg.shake is False and cfg.weight_decay == 0.0          # neither shake-shake nor weight decay
    assert cfg.sigma == 1.0 and cfg.margin == 0.25                 # one-hot penalty; M = 0.25
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.warmup_epochs) == (0.00033, 64, 60, 10)
    assert cfg.augment and cfg.eval_patch == 32 and cfg.test_size is None and cfg.train_size is None
    assert grids()["imagenet_receptive_fields"] == [17, 25, 29] and grids()["imagenet_patches"] == [32]
    assert cfg.run_name() == "imagenet-rf17-m0.25-heaviside-s1-seed0"
    for rf in (17, 25, 29):
        model = train_mod.build_model(profile_config("imagenet", rf=rf), num_classes=1000)
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert model.receptive_field == rf and model.stride == 4
        assert model.stem[0].out_channels == 64 and model.stem[0].kernel_size == (3, 3)
        assert [b.path_a[0][0].out_channels for b in model.blocks] == [64, 64, 128, 128, 256, 256, 512, 512]
        assert [b.path_a[0][0].stride[0] for b in model.blocks] == [2, 1, 2, 1, 1, 1, 1, 1]
        assert [b.path_a[0][0].kernel_size[0] for b in model.blocks] == list(IMAGENET_KERNELS[rf][1:])
        assert not any(b.shake for b in model.blocks)
        assert model.classifier.kernel_size == (1, 1) and model.classifier.out_channels == 1000
        assert all(any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) for _ in convs[:1])
    model = train_mod.build_model(cfg, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 3, 56, 56)
    with pytest.raises(ValueError, match="receptive field"):
        profile_config("imagenet", rf=7)
    with pytest.raises(ValueError, match="workers"):
        profile_config("imagenet", workers=-1)
    assert D.default_workers("cpu") == 0 and 0 <= D.default_workers("cuda") <= 8   # workers: null


# --------------------------------------------------------------------------------------
# RF 17 end to end at 224 px: one CLI command trains and certifies; resuming equals it
# --------------------------------------------------------------------------------------

SMALL = ["--epochs", "2", "--train-size", "12", "--batch-size", "4", "--eval-size", "3",
         "--test-size", "6", "--warmup-epochs", "0.5"]


def _cheap_estimate(cfg, n_train=None, device=None, steps=3, epochs_left=None):
    """estimate_cost times real steps (tested in test_portability); here it would double the cost."""
    return {"device": "cpu", "cpu_class": None, "bf16": False, "channels_last": False, "steps_timed": 0,
            "seconds_per_step": 0.0, "seconds_per_epoch": 0.0, "epochs": epochs_left or cfg.epochs,
            "seconds": 0.0}


@pytest.fixture(scope="module")
def cli_run(folder, tmp_path_factory):
    from bagcert_lib.__main__ import main

    out = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_mod, "estimate_cost", _cheap_estimate)

        def no_in_memory_decode(*a, **k):
            raise AssertionError("ImageNet must stream, not decode into memory")
        mp.setattr(D.folders, "_decode_images", no_in_memory_decode)
        main(["train", "--profile", "imagenet", "--rf", "17", "--data", str(folder), "--out", str(out),
              "--workers", "0", *SMALL])
    return out / "imagenet-rf17-m0.25-heaviside-s1-seed0"


def test_train_and_certify_rf17_one_command(cli_run):
    run = cli_run
    h = pd.read_csv(run / "history.csv")
    assert len(h) == 2 and h.loss.notna().all()
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["dataset"]["name"] == "imagenet" and prov["dataset"]["streamed"]
    assert (prov["n_train"], prov["n_eval"], prov["receptive_field"], prov["stride"]) == (12, 3, 17, 4)
    cert = pd.read_csv(run / "certification.csv", dtype={"condition": str})
    assert set(cert.patch) == {"32x32"} and set(cert.condition) == {"3.2", "3.3"}
    assert (cert.n == 6).all() and (cert.wall_s > 0).all()
    assert (cert.certified_accuracy <= cert.clean_accuracy).all()
    assert json.loads((run / "metrics.json").read_text())["finished"]


def test_streamed_certification_in_chunks_equals_one_pass(cli_run, tmp_path):
    """``certify --chunk 4`` on the streamed val images (6: chunks 0-4 and 4-6, each its own
    slice of the file list): the rows of the one-pass certification."""
    import shutil

    from bagcert_lib.__main__ import main

    run = tmp_path / cli_run.name
    shutil.copytree(cli_run, run)
    main(["certify", str(run), "--patches", "32", "--chunk", "4"])
    key = ["patch", "condition", "n", "clean_accuracy", "certified_accuracy"]
    one = pd.read_csv(cli_run / "certification.csv", dtype={"condition": str})[key]
    chunked = pd.read_csv(run / "certification.csv", dtype={"condition": str})[key]
    pd.testing.assert_frame_equal(chunked, one)
    assert not (run / "certification.parts").exists()


def test_resume_equals_uninterrupted_with_any_workers(cli_run, folder, monkeypatch, tmp_path):
    monkeypatch.setattr(train_mod, "estimate_cost", _cheap_estimate)
    cfg = profile_config("imagenet", rf=17, data=str(folder), epochs=2, train_size=12, batch_size=4,
                         eval_size=3, test_size=6, warmup_epochs=0.5, workers=1)
    part = train_mod.train(cfg, tmp_path / "part", progress=False, stop_after=1)   # one worker
    assert not part["finished"]
    cfg.workers = 0                                                                   # none
    rest = train_mod.train(cfg, tmp_path / "part", progress=False)
    assert rest["finished"]
    from bagcert_lib.pretrained import load_run
    full, _ = load_run(cli_run)
    a, b = full.state_dict(), rest["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    drop = ["train_s", "epoch_s", "images_per_s"]
    pd.testing.assert_frame_equal(pd.read_csv(cli_run / "history.csv").drop(columns=drop),
                                  pd.read_csv(tmp_path / "part" / "history.csv").drop(columns=drop))


# --------------------------------------------------------------------------------------
# Figure 2's ImageNet panel, the ImageNet claims and Table 1's ImageNet timing read ImageNet runs
# --------------------------------------------------------------------------------------

def test_imagenet_runs_feed_figure2_claims_and_table1(cli_run, tmp_path):
    from bagcert_lib.results import (IMAGENET_VAL, imagenet_claims, imagenet_runs, load_runs,
                                     select_runs)

    results = cli_run.parent
    inet = imagenet_runs(results)
    assert list(inet.run) == [cli_run.name]
    cert = pd.read_csv(cli_run / "certification.csv", dtype={"condition": str}).set_index("condition")
    r = inet.iloc[0]
    assert (r.rf, r.margin, r.patch, r.n, r.profile, r.dataset) == (17, 0.25, "32x32", 6, "imagenet", "imagenet")
    assert r.clean_accuracy == cert.loc["3.2", "clean_accuracy"]
    assert (r.certified_3_2, r.certified_3_3) == tuple(cert.loc[["3.2", "3.3"], "certified_accuracy"])
    assert r.seconds_50k == pytest.approx(cert.wall_s.iloc[0] / 6 * IMAGENET_VAL)
    assert r.scale == "12 training images, 2 epochs, certified on 6 val images"
    got = imagenet_claims(inet)            # claims.ipynb's rows imagenet_cond32/33, imagenet_seconds
    assert got["imagenet_cond32"] == r.certified_3_2 and got["imagenet_cond33"] == r.certified_3_3
    assert got["imagenet_seconds"] == pytest.approx(r.seconds_50k) and got["run"].run == cli_run.name
    assert select_runs(load_runs(results)).empty       # the CIFAR-10 figures never show it

    # another RF is plotted (Figure 2) and can time certification, but is not §4's RF 17 run
    other = results.parent / "other"
    import shutil
    shutil.copytree(cli_run, other / "imagenet-rf25-m0.25-heaviside-s1-seed0")
    cfg_file = other / "imagenet-rf25-m0.25-heaviside-s1-seed0" / "config.yaml"
    cfg_file.write_text(cfg_file.read_text().replace("rf: 17", "rf: 25"))
    inet25 = imagenet_runs(other)
    assert list(inet25.rf) == [25]
    got = imagenet_claims(inet25)
    assert got["imagenet_cond32"] is None and got["run"] is None and got["imagenet_seconds"] > 0

    # nothing there (or nothing finished): the paper's values alone, "not run"
    empty = imagenet_runs(tmp_path)
    assert empty.empty and {"clean_accuracy", "certified_3_2", "certified_3_3", "seconds_50k"} <= set(empty.columns)
    assert imagenet_claims(empty) == {"imagenet_cond32": None, "imagenet_cond33": None,
                                      "imagenet_seconds": None, "run": None, "timed_run": None}
    unfinished = tmp_path / "unfinished"
    shutil.copytree(cli_run, unfinished / cli_run.name)
    (unfinished / cli_run.name / "metrics.json").write_text(json.dumps({"finished": False}))
    assert imagenet_runs(unfinished).empty


def test_certification_benchmark_at_a_tiny_size(tmp_path):
    """benchmarks/imagenet_certify.py (the 7-minute claim's measured row) runs on 3 images."""
    import importlib.util

    from bagcert_lib.config import REPO_ROOT
    spec = importlib.util.spec_from_file_location("bench_inet", REPO_ROOT / "benchmarks" / "imagenet_certify.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    bench.main(["--images", "3", "--batch", "2", "--classes", "10", "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["images"]["n"] == 3 and r["model"]["rf"] == 17 and "untrained" in r["model"]["weights"]
    assert r["patches"] == ["32x32"] and r["conditions"] == ["3.2", "3.3"] and r["threads"] >= 1
    for k in ("loading", "forward", "certify", "total"):
        assert r["seconds_per_image"][k] > 0
        assert r["extrapolated_50k_s"][k] == pytest.approx(r["seconds_per_image"][k] * 50_000)
    assert r["seconds"]["total"] >= r["seconds"]["loading"] + r["seconds"]["forward"]
    assert r["cpu"]["model"] and len(r["load_average_at_start"]) == 3 and r["paper_seconds"] == 420


def test_the_cost_estimate_counts_imagenets_training_images():
    """``train --estimate`` and the sweep's estimate give no image count: an ImageNet run's epoch
    is ImageNet's 1,281,167 training images, a CIFAR-10 run's 50,000 (unless train_size says)."""
    import dataclasses

    from bagcert_lib.config import profile_config
    from bagcert_lib.train import estimate_cost

    for dataset, rf, images in (("imagenet", 17, 1_281_167), ("cifar10", 7, 50_000)):
        cfg = dataclasses.replace(profile_config("smoke", dataset=dataset, rf=rf, batch_size=2), train_size=None)
        est = estimate_cost(cfg, steps=1, device="cpu")
        assert est["seconds_per_epoch"] == pytest.approx(est["seconds_per_step"] * (images // 2))
