"""The GPU path: bf16 autocast, channels_last, the certifier on the scores' device,
torch.compile, DDP over NCCL. Skipped without CUDA; on an NVIDIA H200 (torch 2.11.0+cu130, 2026-12-04):
3 passed, 1 skipped (DDP needs 2 GPUs)."""
import json

import pytest
import torch

from bagcert_lib.certifier import certify
from bagcert_lib.config import profile_config
from bagcert_lib.methods import method_for
from bagcert_lib.runtime import memory_format, region_scores, use_amp, use_channels_last
from bagcert_lib.train import train

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_train_step_and_certify_on_cuda():
    cfg = profile_config("smoke", rf=5, device="cuda")
    dev = torch.device("cuda")
    assert use_amp(dev, cfg.amp) and use_channels_last(dev, cfg.channels_last)
    method = method_for(cfg)
    model = method.build_model(cfg).to(dev).to(memory_format=memory_format(dev))
    x = torch.rand(8, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,), device=dev)
    loss = method.loss(model, x, y, cfg, dev)          # bf16 autocast inside
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad.is_cuda for p in model.parameters())
    scores = region_scores(model, x, cfg.head, cfg.amp)
    cert = certify(scores, y, patch=5, rf=model.receptive_field, stride=model.stride)
    assert scores.is_cuda and cert.certified.is_cuda          # summed-area tables on the GPU
    assert (cert.certified <= cert.correct).all()


@cuda
@pytest.mark.parametrize("compile", [False, True])
def test_train_on_cuda(tmp_path, colour_folder, compile):
    cfg = profile_config("smoke", dataset="imagefolder", data=str(colour_folder), rf=5, epochs=1,
                         eval_size=30, device="cuda", compile=compile)
    out = train(cfg, tmp_path / "run", progress=False)
    assert out["finished"] and out["history"].loss.notna().all()
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["amp_bf16"] and prov["channels_last"] and prov["world_size"] == 1


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.timeout(400)
def test_ddp_over_nccl(tmp_path, colour_folder):
    from test_distributed import WORKER, torchrun

    cfg = profile_config("smoke", dataset="imagefolder", data=str(colour_folder), rf=5, epochs=2,
                         eval_size=30, device="cuda")
    rc, out = torchrun([WORKER, "train", json.dumps(cfg.to_dict()), tmp_path / "run"], timeout=300)
    assert rc == 0, out[-4000:]
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert (prov["world_size"], prov["backend"]) == (2, "nccl")
    assert train(cfg, tmp_path / "run", progress=False)["finished"]      # resume on one GPU
