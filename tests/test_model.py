"""Region scorer geometry (§3.2, App. A.1) and the receptive-field property the certifier relies on."""
import pytest
import torch

from bagcert_lib.certifier import affected_range
from bagcert_lib.model import (CIFAR_KERNELS, RegionScorer, cifar_scorer, imagenet_scorer,
                               num_parameters)


@pytest.mark.parametrize("rf,millions", [(5, 28), (7, 38), (9, 47), (11, 57), (13, 66)])
def test_parameter_counts_match_table_1(rf, millions):
    assert round(num_parameters(cifar_scorer(rf, width=768)) / 1e6) == millions


@pytest.mark.parametrize("rf", sorted(CIFAR_KERNELS))
def test_cifar_geometry(rf):
    m = cifar_scorer(rf, width=8)
    assert (m.receptive_field, m.stride) == (rf, 1)
    assert m.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 10, 32, 32)


@pytest.mark.parametrize("rf", [17, 25, 29])
def test_imagenet_geometry(rf):
    m = imagenet_scorer(rf, num_classes=7)
    assert (m.receptive_field, m.stride) == (rf, 4)
    assert m.eval()(torch.rand(1, 3, 224, 224)).shape == (1, 7, 56, 56)


def test_geometry_is_computed_from_the_layers():
    # all-3x3 blocks: 3 + 8 * 2 = 19, a receptive field no lookup table knows
    m = RegionScorer((3,) * 9, (4,) * 9, (1,) * 9, num_classes=2)
    assert m.receptive_field == 19
    m = RegionScorer((3,) * 9, (4,) * 9, (1, 2, 1, 1, 1, 1, 1, 1, 1), num_classes=2, shake=False)
    assert (m.receptive_field, m.stride) == (3 + 2 + 7 * 4, 2)


@pytest.mark.parametrize("bad", [dict(rf=6), dict(rf=15), dict(width=0)])
def test_bad_model_arguments(bad):
    with pytest.raises(ValueError):
        cifar_scorer(**{"rf": 7, "width": 8, **bad})
    with pytest.raises(ValueError):
        imagenet_scorer(rf=7)


def _randomise_bn(model):
    g = torch.Generator().manual_seed(0)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            mod.running_var.copy_(0.5 + torch.rand(mod.num_features, generator=g))
    return model.eval()


MODELS = {
    "cifar-rf5": (lambda: cifar_scorer(5, width=16), 32, [(5, 5), (1, 7)]),
    "cifar-rf13": (lambda: cifar_scorer(13, width=16), 32, [(5, 5), (3, 8)]),
    "imagenet-rf17": (lambda: imagenet_scorer(17, num_classes=10), 64, [(8, 8), (5, 11)]),
    "imagenet-rf29": (lambda: imagenet_scorer(29, num_classes=10), 64, [(8, 8)]),
}


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_receptive_field_property(name, amp):
    """A random patch at l changes no output outside R(l), and R(l) is tight for inner patches."""
    make, size, patches = MODELS[name]
    torch.manual_seed(0)
    model = _randomise_bn(make()).to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        base = model(x).float()
    n_out = base.shape[-1]
    gen = torch.Generator().manual_seed(1)
    for ph, pw in patches:
        r0, r1 = affected_range(size, n_out, ph, model.receptive_field, model.stride)
        c0, c1 = affected_range(size, n_out, pw, model.receptive_field, model.stride)
        positions = [(0, 0), (size - ph, size - pw), (size // 2 - ph // 2, size // 2 - pw // 2)]
        positions += [tuple(torch.randint(0, size - p + 1, (1,), generator=gen).item() for p in (ph, pw))
                      for _ in range(3)]
        for a, b in positions:
            x2 = x.clone()
            x2[:, :, a:a + ph, b:b + pw] = torch.rand(2, 3, ph, pw, generator=gen)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                out = model(x2).float()
            changed = (out != base).any(0).any(0)
            inside = torch.zeros_like(changed)
            inside[r0[a]:r1[a] + 1, c0[b]:c1[b] + 1] = True
            assert not (changed & ~inside).any(), f"patch at {(a, b)} changed outputs outside R(l)"
            # tightness: the corners of R(l) change too (the geometry is not overestimated)
            rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
            assert (rows.min(), rows.max(), cols.min(), cols.max()) == (r0[a], r1[a], c0[b], c1[b])
