"""Worker that tests/test_distributed.py starts under torchrun (2 gloo processes, 1 thread each).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/dist_worker.py MODE CFG OUT

MODE ``step``: write this rank's batches of epochs 1-2 and, rank 0, the gradients of one DDP step
in fp32 and fp64 (``one_step``, also called with world size 1 by the test itself). ``train``: ``train(cfg, OUT,
stop_after=1)``. ``die``: rank 1 exits at once, rank 0 waits at a barrier (must not hang).
"""
import json
import os
import sys

import torch

from bagcert_lib import distributed
from bagcert_lib.config import TrainConfig
from bagcert_lib.methods import method_for
from bagcert_lib.train import _epoch_seed, epoch_batches, load_data, train


def epoch_data(cfg, ctx, epochs=(0, 1)):
    """This rank's (x, y) per step of each epoch, on the CPU."""
    _, data, _ = load_data(cfg)
    out = {}
    for e in epochs:
        torch.manual_seed(_epoch_seed(cfg.seed, e))       # DS ablations draw from it
        out[e] = [(x.clone(), y.clone()) for x, y in
                  epoch_batches(data.x_train, data.y_train, cfg, e, "cpu", False, ctx=ctx)]
    return out


def one_step(cfg, ctx, dtype=torch.float32):
    """Loss (mean over ranks) and parameter gradients (DDP-averaged) of epoch 1's first step,
    built as train() builds it (``dtype``: float64 to check the arithmetic without fp32 noise)."""
    full, data, _ = load_data(cfg)
    torch.manual_seed(cfg.seed)
    method = method_for(cfg)
    model = distributed.sync_batchnorm(method.build_model(cfg, len(full.classes)), ctx, cfg.sync_bn)
    model = model.to(dtype)
    net = distributed.parallel(model, ctx).train()
    torch.manual_seed(_epoch_seed(cfg.seed, 0))
    x, y = next(iter(epoch_batches(data.x_train, data.y_train, cfg, 0, "cpu", False, method, ctx)))
    loss = method.loss(net, x.to(dtype), y, cfg, torch.device("cpu"))
    loss.backward()
    return {"loss": distributed.all_reduce_mean(loss.detach(), ctx),
            "grads": {k: p.grad.clone() for k, p in model.named_parameters()},
            "buffers": {k: b.clone() for k, b in model.named_buffers()}}


def main(mode, cfg_json, out):
    torch.set_num_threads(1)
    cfg = TrainConfig(**json.loads(cfg_json))
    if mode == "train":
        train(cfg, out, progress=False, stop_after=1)
        return
    ctx = distributed.setup("cpu", cfg.batch_size)
    try:
        if mode == "die":
            if ctx.rank == 1:
                os._exit(3)
            distributed.barrier(ctx)
        elif mode == "step":
            torch.save(epoch_data(cfg, ctx), os.path.join(out, f"order{ctx.rank}.pt"))
            steps = {dt: one_step(cfg, ctx, getattr(torch, dt)) for dt in ("float32", "float64")}
            if ctx.is_main:
                torch.save(steps, os.path.join(out, "step.pt"))
    finally:
        distributed.teardown(ctx)


if __name__ == "__main__":
    main(*sys.argv[1:4])
