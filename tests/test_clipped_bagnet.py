"""Clipped BagNet's certificate (Zhang et al., 2020) against brute force, the receptive field and
the patch attack."""
import itertools

import pytest
import torch

from bagcert_lib import clipped_bagnet as cbn
from bagcert_lib.certifier import _region_ranges, _Geometry
from bagcert_lib.config import profile_config
from bagcert_lib.data import load_dataset
from bagcert_lib.local_logits import local_logits
from bagcert_lib.train import train


def _regions(shape, patch, rf):
    r0, r1, c0, c1 = _region_ranges(_Geometry(shape, patch, rf, 1, None), "cpu")
    return [(slice(int(r0[a]), int(r1[a]) + 1), slice(int(c0[b]), int(c1[b]) + 1))
            for a in range(len(r0)) for b in range(len(c0))]


def brute_force_robust(s, y, patch, rf, corners=True):
    """Every patch position l, and on R(l) every extreme point of [0, 1]^{C × R(l)}
    (``corners``; else only the best play per class, s_y → 0 and s_c → 1): is the clipped sum's
    prediction strictly y at each one?"""
    B, C, H, W = s.shape
    robust = torch.ones(B, dtype=torch.bool)
    for b in range(B):
        for rows, cols in _regions(s.shape, patch, rf):
            n = (rows.stop - rows.start) * (cols.stop - cols.start)
            outside = s[b].sum((1, 2)) - s[b, :, rows, cols].sum((1, 2))
            if corners:
                bits = torch.tensor(list(itertools.product((0.0, 1.0), repeat=C * n)), dtype=s.dtype)
                g = outside + bits.view(-1, C, n).sum(2)                       # (plays, C)
            else:
                g = outside.repeat(C, 1)
                g[:, y[b]] += 0.0                                               # s_y -> 0 on R(l)
                g[torch.arange(C), torch.arange(C)] += n                         # s_c -> 1 on R(l)
            others = g.clone()
            others[:, y[b]] = float("-inf")
            if not (g[:, y[b]] > others.amax(1) + 1e-9).all():
                robust[b] = False
                break
    return robust


def _maps(B, C, H, W, seed):
    """Scores in [0, 1] that lean toward the label by a per-sample strength k ∈ [0, 1]
    (s_y = k + (1 − k) U, s_c = (1 − k) U), so that some samples certify and some do not."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (B,), generator=g)
    k = torch.rand(B, 1, 1, 1, generator=g, dtype=torch.float64)
    s = (1 - k) * torch.rand(B, C, H, W, generator=g, dtype=torch.float64)
    s[torch.arange(B), y] += k[:, 0]
    return s, y


@pytest.mark.parametrize("patch", [(1, 1), (1, 2), (2, 1), (2, 2)])
def test_certificate_is_exact_on_every_extreme_point(patch):
    """Certified ⇔ no assignment of the corners of [0, 1]^{C × R(l)} at any l flips the
    prediction (RF 1, 3 classes): the bound is sound and tight."""
    s, y = _maps(24, 3, 4, 4, seed=patch[0] * 3 + patch[1])
    cert = cbn.certify_scores(s, y, patch, 1)
    bf = brute_force_robust(s, y, patch, 1, corners=True)
    assert torch.equal(cert.certified, bf)
    assert cert.certified.any() and (cert.correct & ~cert.certified).any(), "need both kinds"


@pytest.mark.parametrize("patch,rf", [((2, 2), 3), ((1, 3), 3), ((3, 2), 5)])
def test_certificate_is_exact_on_larger_maps(patch, rf):
    """On 12 × 12 maps with RF 3–5: the per-class best play at every l, against the certificate."""
    s, y = _maps(40, 4, 12, 12, seed=7 + rf)
    cert = cbn.certify_scores(s, y, patch, rf)
    assert torch.equal(cert.certified, brute_force_robust(s, y, patch, rf, corners=False))
    assert cert.certified.any() and (cert.correct & ~cert.certified).any()


def test_an_unsound_variant_is_caught():
    """A certificate that takes R(l) from RF 1 on an RF 3 model certifies samples that the brute
    force breaks: the check above can fail."""
    s, y = _maps(40, 3, 5, 5, seed=3)
    wrong = cbn.certify_scores(s, y, 1, rf=1).certified
    bf = brute_force_robust(s, y, 1, rf=3, corners=False)
    assert (wrong & ~bf).any()


def test_scores_order_classes_as_the_clipped_sum():
    z = torch.randn(5, 4, 6, 6) * 40
    assert torch.equal(cbn.scores(z).sum((2, 3)).argmax(1), cbn.predict(z))
    assert cbn.scores(z).min() >= 0 and cbn.scores(z).max() <= 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory, colour_folder):
    cfg = profile_config("smoke", dataset="imagefolder", data=str(colour_folder), rf=5, width=8,
                         epochs=6, lr=0.01, train_size=None, eval_size=120, method="cbn")
    out = train(cfg, tmp_path_factory.mktemp("run"), progress=False)
    data = load_dataset("imagefolder", str(colour_folder), progress=False)
    return out, data.x_test.float() / 255, data.y_test


def test_trains_and_certifies_through_the_loop(trained):
    out, x, y = trained
    h = out["history"]
    assert out["finished"] and h.clean_accuracy.iloc[-1] > 0.9
    df = cbn.certify_model(out["model"], [(x, y)], [(1, 1), (5, 5), (2, 12)], progress=False)
    assert set(df.condition) == {"CBN"} and (df.certified_accuracy <= df.clean_accuracy).all()
    one = cbn.certify(local_logits(out["model"], x), y, (5, 5), 5)
    row = df.set_index("patch").loc["5x5"]
    assert row.certified_accuracy == pytest.approx(one.certified.float().mean().item())
    assert row.clean_accuracy == pytest.approx(one.correct.float().mean().item())


@pytest.mark.parametrize("patch", [(1, 1), (3, 3), (2, 12)])
def test_attack_never_flips_certified(trained, patch):
    out, x, y = trained
    model = out["model"].eval()
    res = cbn.attack(model, x, y, patch, steps=25, generator=torch.Generator().manual_seed(0))
    assert not (res.flipped & res.certificate.certified).any()
    if patch == (1, 1):
        assert res.certificate.certified.sum() > 0, "the tiny model should certify some samples"
    # the adversarial images that count as broken really are misclassified by CBN
    if res.flipped.any():
        assert (cbn.predict(local_logits(model, res.images[res.flipped])) != y[res.flipped]).all()


def test_attack_breaks_uncertified_samples(trained):
    out, x, y = trained
    res = cbn.attack(out["model"], x, y, (24, 24), steps=25, generator=torch.Generator().manual_seed(0))
    assert res.flipped.sum() > 0


def test_a_patch_changes_logits_only_in_its_region(trained):
    """The receptive-field property the certificate rests on, on the trained scorer: a patch at
    l changes no clipped logit outside R(l) (``certifier.affected_range``)."""
    from bagcert_lib.certifier import affected_range

    out, x, _ = trained
    model = out["model"].eval()
    base = cbn.scores(local_logits(model, x[:4], amp=False))
    g = torch.Generator().manual_seed(0)
    for ph, pw in [(3, 3), (2, 12), (1, 1)]:
        r0, r1 = affected_range(32, 32, ph, model.receptive_field, model.stride)
        c0, c1 = affected_range(32, 32, pw, model.receptive_field, model.stride)
        for a, b in [(0, 0), (32 - ph, 32 - pw), (10, 7)]:
            x2 = x[:4].clone()
            x2[:, :, a:a + ph, b:b + pw] = torch.rand(4, 3, ph, pw, generator=g)
            changed = (cbn.scores(local_logits(model, x2, amp=False)) != base).any(0).any(0)
            inside = torch.zeros_like(changed)
            inside[r0[a]:r1[a] + 1, c0[b]:c1[b] + 1] = True
            assert changed.any() and not (changed & ~inside).any()
