"""No crash and no hang on any x86-64 CPU; the guards that keep CI from hanging.

On AVX2-only CPUs torch 2.13/2.14 crashes (or spins forever) in the backward of a 1x1 stride-2
convolution with 2-7 input channels in channels_last, which is the stride-2 shortcut of DS's
ResNet-18 at smoke width 4. The default memory format avoids it there (such models stay
contiguous; the region scorer, stride 1 throughout, is channels_last); these tests run that exact
layer, the region scorer and the DS smoke training on the default path, each in a child process.
"""
import subprocess
import sys
import textwrap

import pytest
import torch

from bagcert_lib import runtime
from bagcert_lib.config import profile_config

AVX2 = {"model": "AMD EPYC (AVX2 only)", "avx2": True, "avx512f": False, "avx512_bf16": False,
        "amx_bf16": False, "amx_tile": False}
AVX512_BF16 = {**AVX2, "model": "AMD EPYC (AVX-512)", "avx512f": True, "avx512_bf16": True}


@pytest.mark.parametrize("features,expected", [(AVX2, False), (AVX512_BF16, True)])
def test_memory_format_policy(monkeypatch, features, expected):
    monkeypatch.setattr(runtime, "cpu_features", lambda: features)
    assert runtime.use_channels_last("cpu") is expected
    assert runtime.use_channels_last("cpu", True) is True and runtime.use_channels_last("cpu", False) is False
    assert runtime.use_channels_last("cuda") is True
    assert runtime.use_amp("cpu") is expected          # bf16 only where it is native
    assert runtime.cpu_class() == ("avx512-bf16" if expected else "avx2-or-older")


@pytest.mark.parametrize("features", [AVX2, AVX512_BF16])
def test_memory_format_follows_the_model_on_avx2(monkeypatch, features):
    """On AVX2 a model is channels_last unless it has a strided convolution with < 8 input
    channels (the crashing layers); with AVX-512 every model is."""
    from bagcert_lib.model import cifar_scorer, imagenet_scorer
    from bagcert_lib.smoothing import resnet18

    monkeypatch.setattr(runtime, "cpu_features", lambda: features)
    avx512 = features["avx512f"]
    for model in (cifar_scorer(7, 8), cifar_scorer(13, 32), imagenet_scorer(17, num_classes=10)):
        assert runtime.use_channels_last("cpu", model=model) is True
    for model in (resnet18(width=4), torch.nn.Conv2d(4, 8, 1, stride=2),
                  torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(7, 8, 3, stride=2))):
        assert runtime.channels_last_safe_on_avx2(model) is False
        assert runtime.use_channels_last("cpu", model=model) is avx512
        assert runtime.use_channels_last("cpu", True, model) is True     # an explicit choice wins
    for model in (resnet18(width=16), torch.nn.Conv2d(8, 16, 1, stride=2), torch.nn.Conv2d(4, 8, 1)):
        assert runtime.channels_last_safe_on_avx2(model) is True


def test_forward_batch_keeps_a_cpu_threads_inputs_in_cache(monkeypatch):
    """Images per forward pass of the many-pass defenses: as given; on a CPU 64 CIFAR-10 images
    (one 224 × 224 image) per thread; elsewhere the accelerator's default."""
    cifar, imagenet = torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 224, 224)
    assert runtime.forward_batch(cifar, 7) == 7
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert runtime.forward_batch(cifar) == 64 and runtime.forward_batch(imagenet) == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert runtime.forward_batch(cifar) == 256 and runtime.forward_batch(imagenet) == 5
    assert runtime.forward_batch(torch.zeros(2, 3, 32, 32, device="meta"), accelerator=512) == 512


def test_cpu_features_reads_this_machine():
    f = runtime.cpu_features()
    assert set(runtime.CPU_FLAGS) <= set(f) and f["model"]
    if f["avx512_bf16"]:
        assert runtime.cpu_supports_bf16()


@pytest.mark.subprocess(timeout=300)
@pytest.mark.parametrize("method,channels_last", [("bagcert", True), ("ds-block", False)])
def test_trainer_memory_format_on_avx2(monkeypatch, tmp_path, colour_folder, method, channels_last):
    """On an AVX2-only CPU the trainer keeps DS's smoke ResNet-18 (a 1x1 stride-2 shortcut from 4
    channels) contiguous and trains the region scorer (stride 1 throughout) in channels_last."""
    import json
    from bagcert_lib.train import train

    monkeypatch.setattr(runtime, "cpu_features", lambda: AVX2)
    cfg = profile_config("smoke", dataset="imagefolder", data=str(colour_folder), rf=5, epochs=1,
                         eval_size=8, method=method)
    out = train(cfg, tmp_path / "run", progress=False)
    conv = next(m for m in out["model"].modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) is channels_last
    assert conv.weight.is_contiguous() is not channels_last
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["channels_last"] is channels_last and prov["segments"][-1]["channels_last"] is channels_last
    assert prov["segments"][-1]["cpu_class"] == "avx2-or-older"


def _child(code: str, timeout: int = 240):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert proc.returncode == 0, f"rc {proc.returncode}: {proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.parametrize("cin,cout", [(4, 8), (2, 4), (4, 16)])
def test_stride2_shortcut_trains_on_the_default_path(cin, cout):
    """The layer that crashes on AVX2 CPUs, forward + backward, in the memory format the project picks
    for this CPU, in a child process (a segmentation fault there fails this test only)."""
    out = _child(f"""
        import torch
        from bagcert_lib.runtime import memory_format
        conv = torch.nn.Conv2d({cin}, {cout}, 1, stride=2, bias=False)
        mf = memory_format("cpu", model=conv)
        conv = conv.to(memory_format=mf)
        for _ in range(8):
            x = torch.randn(32, {cin}, 32, 32).contiguous(memory_format=mf).requires_grad_()
            conv(x).square().mean().backward()
        print("ok", mf)
    """)
    assert out.startswith("ok")


def test_region_scorer_trains_on_the_default_path():
    """The region scorer trains (forward + backward + Adam) in this CPU's default format for it
    (channels_last here too on AVX2 CPUs), in a child process, at the cpu profile's width."""
    out = _child("""
        import torch
        from bagcert_lib.heads import heaviside
        from bagcert_lib.loss import total_loss
        from bagcert_lib.model import cifar_scorer
        from bagcert_lib.runtime import memory_format
        model = cifar_scorer(7, 32)
        mf = memory_format("cpu", model=model)
        model = model.to(memory_format=mf).train()
        opt = torch.optim.Adam(model.parameters())
        for _ in range(3):
            x = torch.rand(16, 3, 32, 32).contiguous(memory_format=mf)
            loss = total_loss(heaviside(model(x)), torch.randint(0, 10, (16,)), 0.5, 0.0)
            opt.zero_grad(); loss.backward(); opt.step()
        print("ok", mf)
    """)
    assert out.startswith("ok")


@pytest.mark.subprocess(timeout=300)
def test_ds_smoke_training_on_the_default_path(tmp_path, colour_folder):
    """DS's ResNet-18 at smoke width 4 (the shortcut above) trains end to end with the defaults."""
    from bagcert_lib.train import train

    cfg = profile_config("smoke", dataset="imagefolder", data=str(colour_folder), method="ds-block",
                         epochs=1, eval_size=8)
    assert cfg.channels_last is None            # the default: chosen per device
    assert train(cfg, tmp_path / "run", progress=False)["finished"]


def _pytest(tmp_path, body, *args, env=None):
    (tmp_path / "test_probe.py").write_text(textwrap.dedent(body))
    import os
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    (tmp_path / "conftest.py").write_text((root / "conftest.py").read_text())
    return subprocess.run([sys.executable, "-m", "pytest", str(tmp_path / "test_probe.py"), "-q",
                           "-p", "no:cacheprovider", "--rootdir", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, **(env or {}), "BAGCERT_PYTEST_CHILD": ""})


def test_suite_timeout_names_the_test_that_ran_over(tmp_path):
    proc = _pytest(tmp_path, """
        import time
        def test_quick():
            pass
        def test_stuck_forever():
            time.sleep(60)
    """, env={"BAGCERT_SUITE_TIMEOUT": "3"})
    assert proc.returncode == 3
    assert "SUITE TIMEOUT" in proc.stdout and "test_probe.py::test_stuck_forever" in proc.stdout


def test_subprocess_marker_turns_a_crash_into_one_failure(tmp_path):
    proc = _pytest(tmp_path, """
        import os, pytest
        @pytest.mark.subprocess(timeout=60)
        def test_segfaults():
            os.kill(os.getpid(), 11)
        def test_after():
            pass
    """)
    assert "1 failed, 1 passed" in proc.stdout and "killed by signal 11" in proc.stdout
