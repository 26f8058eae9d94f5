"""Issue 12: no crash and no hang on any x86-64 CPU; the guards that keep CI from hanging.

On AVX2-only CPUs torch 2.13/2.14 crashes (or spins forever) in the backward of a 1x1 stride-2
convolution with 2-4 input channels in channels_last, which is the stride-2 shortcut of DS's
ResNet-18 at smoke width 4. The default memory format avoids it there; these tests run that exact
layer and the DS smoke training on the default path, each in a child process.
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


def test_cpu_features_reads_this_machine():
    f = runtime.cpu_features()
    assert set(runtime.CPU_FLAGS) <= set(f) and f["model"]
    if f["avx512_bf16"]:
        assert runtime.cpu_supports_bf16()


def test_trainer_uses_contiguous_format_on_avx2(monkeypatch, tmp_path, colour_folder):
    """On an AVX2-only CPU the trainer's model and batches are in the contiguous format."""
    from bagcert_lib.train import train

    monkeypatch.setattr(runtime, "cpu_features", lambda: AVX2)
    cfg = profile_config("smoke", dataset="imagefolder", data=str(colour_folder), rf=5, epochs=1,
                         eval_size=12)
    out = train(cfg, tmp_path / "run", progress=False)
    w = out["model"].stem[0].weight
    assert w.is_contiguous() and not (w.is_contiguous(memory_format=torch.channels_last)
                                      and not w.is_contiguous())


def _child(code: str, timeout: int = 240):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert proc.returncode == 0, f"rc {proc.returncode}: {proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.parametrize("cin,cout", [(4, 8), (2, 4), (4, 16)])
def test_stride2_shortcut_trains_on_the_default_path(cin, cout):
    """The crashing layer of issue 12, forward + backward, in the memory format the project picks
    for this CPU, in a child process (a segmentation fault there fails this test only)."""
    out = _child(f"""
        import torch
        from bagcert_lib.runtime import memory_format
        mf = memory_format("cpu")
        conv = torch.nn.Conv2d({cin}, {cout}, 1, stride=2, bias=False).to(memory_format=mf)
        for _ in range(8):
            x = torch.randn(32, {cin}, 32, 32).contiguous(memory_format=mf).requires_grad_()
            conv(x).square().mean().backward()
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
