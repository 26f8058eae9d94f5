"""The certifier (§3.1) against the literal Condition 3.1, built position by position."""
import zlib

import pytest
import torch

from bagcert_lib import certify
from bagcert_lib.certifier import ScoreMaps, affected_range


def region_mask(h_out, w_out, a, b, patch, rf, stride):
    """R(l) straight from its definition: outputs whose receptive window meets the patch."""
    (ph, pw), (rh, rw), (sh, sw) = patch, rf, stride
    i, j = torch.arange(h_out)[:, None], torch.arange(w_out)[None, :]
    rows_meet = (i * sh - rh // 2 <= a + ph - 1) & (i * sh + rh // 2 >= a)
    cols_meet = (j * sw - rw // 2 <= b + pw - 1) & (j * sw + rw // 2 >= b)
    return rows_meet & cols_meet


def brute_force(scores, labels, patch, rf, stride, image_size):
    """Condition 3.1 with g = g_Σ: build s^wc(s, l) for every l and evaluate g (float64)."""
    B, C, H, W = scores.shape
    s = scores.double()
    onehot = torch.nn.functional.one_hot(labels, C).bool()[:, :, None, None]
    g = s.sum((2, 3))
    correct = (g.gather(1, labels[:, None]) - g).masked_fill(onehot[:, :, 0, 0], 1).min(1).values > 0
    certified = correct.clone()
    r_max = 0
    for a in range(image_size[0] - patch[0] + 1):
        for b in range(image_size[1] - patch[1] + 1):
            mask = region_mask(H, W, a, b, patch, rf, stride)
            r_max = max(r_max, int(mask.sum()))
            worst = torch.where(onehot, torch.zeros_like(s), torch.ones_like(s))
            swc = torch.where(mask, worst, s)
            gw = swc.sum((2, 3))
            d = (gw.gather(1, labels[:, None]) - gw).masked_fill(onehot[:, :, 0, 0], 1)
            certified &= d.min(1).values > 0
    d = (g.gather(1, labels[:, None]) - g).masked_fill(onehot[:, :, 0, 0], float("inf"))
    certified_global = correct & (d.min(1).values > 2 * r_max)
    return correct, certified, certified_global


def random_scores(gen, labels, C, H, W, kind):
    """Score maps whose quality u varies per sample, so margins spread across the threshold:
    the true class is on with probability 1 - 0.5u, every other class with probability 0.5u."""
    B = len(labels)
    u = torch.rand(B, 1, 1, 1, generator=gen) ** 2
    onehot = torch.nn.functional.one_hot(labels, C).bool()[:, :, None, None]
    p_on = torch.where(onehot, 1 - 0.5 * u, 0.5 * u)
    on = torch.rand(B, C, H, W, generator=gen) < p_on
    if kind == "binary":
        return on.float()
    noise = torch.rand(B, C, H, W, generator=gen)
    if kind == "fractional":                       # element-wise sigmoid-like scores in [0, 1]
        return torch.where(on, 1 - 0.1 * noise, 0.1 * noise)
    logits = torch.where(on, 4.0, 0.0) + noise       # channel-wise softmax scores
    return torch.softmax(logits, 1)


CASES = [
    # (H_out, W_out, patch, rf, stride, image_size)
    (8, 8, (1, 1), (1, 1), (1, 1), None),
    (8, 8, (2, 2), (3, 3), (1, 1), None),
    (8, 8, (3, 2), (3, 5), (1, 1), None),
    (10, 12, (1, 4), (5, 5), (1, 1), None),
    (12, 12, (6, 1), (3, 3), (1, 1), None),
    (6, 6, (6, 6), (1, 1), (1, 1), None),         # R(l) is everything: nothing certifiable
    (10, 10, (2, 3), (5, 5), (2, 2), None),
    (8, 8, (3, 3), (7, 7), (2, 2), (15, 15)),     # odd input with a stride-2 network
    (8, 10, (4, 2), (9, 9), (3, 2), (24, 20)),
    (12, 12, (5, 5), (17, 17), (4, 4), None),     # ImageNet-like geometry
]


@pytest.mark.parametrize("kind", ["binary", "fractional", "softmax"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}-p{c[2]}-rf{c[3]}-s{c[4]}")
def test_condition_3_2_equals_brute_force(case, kind):
    H, W, patch, rf, stride, image_size = case
    gen = torch.Generator().manual_seed(zlib.crc32(repr((case, kind)).encode()))
    B, C = 400, 3
    labels = torch.randint(0, C, (B,), generator=gen)
    scores = random_scores(gen, labels, C, H, W, kind)
    size = image_size or (H * stride[0], W * stride[1])
    cert = certify(scores, labels, patch, rf, stride, image_size=image_size)
    correct, certified, certified_global = brute_force(scores, labels, patch, rf, stride, size)
    assert torch.equal(cert.correct, correct)
    assert torch.equal(cert.certified, certified)
    assert torch.equal(cert.certified_global, certified_global)
    # both outcomes occur, so the comparison is not vacuous
    assert certified.sum() > 0 or patch == (6, 6)
    assert (correct & ~certified).sum() > 0
    assert (cert.certified_global <= cert.certified).all() and (cert.certified <= cert.correct).all()
    # the reported weakest point (c*, l*) attains the reported minimum margin (R(l) from its definition)
    for b in range(0, B, 37):
        mask = region_mask(H, W, cert.row[b].item(), cert.col[b].item(), patch, rf, stride)
        delta = scores[b, labels[b]].double() - scores[b, cert.target[b]].double()
        assert cert.target[b] != labels[b]
        m = delta[~mask].sum() - mask.sum()
        assert torch.isclose(m, cert.margin[b], atol=1e-9)


def test_ties_are_neither_correct_nor_certified():
    s = torch.zeros(3, 2, 4, 4)
    s[0, 0] = 1                      # class 0 everywhere, class 1 nowhere: margin 16 - 0
    s[1, :] = 1                      # a tie between the classes
    s[2, 0] = 1
    s[2, 1, :2] = 1                  # class 0: 16, class 1: 8
    labels = torch.tensor([0, 0, 0])
    c = certify(s, labels, patch=1, rf=1)
    assert c.correct.tolist() == [True, False, True]
    # sample 2, patch 1x1, rf 1: |R(l)| = 1; worst l in class-1-free area gives 16-8-... exact:
    # Σ_{∉R} Δ = 8 - Δ_l - ... checked against brute force below
    ref = brute_force(s, labels, (1, 1), (1, 1), (1, 1), (4, 4))
    assert torch.equal(c.certified, ref[1])
    # exact tie at the certification threshold: Σ_{∉R} Δ = |R(l)|
    s = torch.zeros(1, 2, 1, 3)
    s[0, 0] = 1
    s[0, 0, 0, 2] = 0                # Δ = (1, 1, 0); a 1x1 patch, rf 1 at l=0: 1 = |R| -> tie
    c = certify(s, torch.tensor([0]), patch=1, rf=1)
    assert c.correct.item() and not c.certified.item()
    assert c.margin.item() == 0


def test_affected_range_clips_at_border():
    first, last = affected_range(n_in=8, n_out=8, patch=2, rf=5, stride=1)
    assert first.tolist() == [0, 0, 0, 1, 2, 3, 4]
    assert last.tolist() == [3, 4, 5, 6, 7, 7, 7]


def test_many_shapes_share_one_scoremaps():
    gen = torch.Generator().manual_seed(1)
    s = (torch.rand(50, 10, 32, 32, generator=gen) < 0.2).float()
    s[:, 0] = 1
    labels = torch.zeros(50, dtype=torch.long)
    maps = ScoreMaps(s, labels)
    for p in [(5, 5), (1, 24), (24, 1)]:
        a = maps.certify(p, 7)
        b = certify(s, labels, p, 7)
        assert torch.equal(a.certified, b.certified) and torch.equal(a.certified_global, b.certified_global)


def test_condition_3_3_uses_r_max():
    s = torch.zeros(1, 2, 32, 32)
    s[0, 0] = 1
    c = certify(s, torch.tensor([0]), patch=5, rf=7)
    assert c.r_max == 11 * 11
    assert c.certified_global.item() == (32 * 32 > 2 * 121)


@pytest.mark.parametrize("bad", [
    dict(patch=33), dict(patch=(1, 40)), dict(patch=0), dict(rf=4), dict(rf=-1), dict(stride=0)])
def test_bad_arguments_raise(bad):
    args = dict(patch=5, rf=7, stride=1)
    args.update(bad)
    with pytest.raises(ValueError):
        certify(torch.zeros(2, 10, 32, 32), torch.zeros(2, dtype=torch.long), **args)


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        certify(torch.zeros(10, 32, 32), torch.zeros(10, dtype=torch.long), 5, 7)
    with pytest.raises(ValueError):
        certify(torch.zeros(2, 10, 32, 32), torch.zeros(3, dtype=torch.long), 5, 7)


COUNTER_CASES = [
    # (H_out, W_out, rf, stride, image_size, patches): nested squares, rectangles, odd geometry
    (12, 12, (3, 3), (1, 1), None, [(1, 1), (2, 2), (3, 3), (5, 5), (1, 6), (6, 1), (2, 3), (12, 12)]),
    (10, 12, (5, 5), (1, 1), None, [(4, 2), (1, 1), (3, 3), (2, 6), (6, 2)]),
    (8, 8, (7, 7), (2, 2), (15, 15), [(1, 1), (3, 3), (2, 5), (5, 2), (8, 8)]),
    (12, 12, (17, 17), (4, 4), None, [(5, 5), (10, 10), (1, 20)]),
]


@pytest.mark.parametrize("kind", ["binary", "fractional", "softmax"])
@pytest.mark.parametrize("case", COUNTER_CASES, ids=lambda c: f"{c[0]}x{c[1]}-rf{c[2]}-s{c[3]}")
def test_certified_counter_equals_scoremaps(case, kind):
    """The pruned counter (Condition 3.3 first, class pruning, monotonicity in the patch) gives
    exactly ScoreMaps' answers, over several batches."""
    from bagcert_lib.certifier import CertifiedCounter

    H, W, rf, stride, image_size, patches = case
    gen = torch.Generator().manual_seed(zlib.crc32(repr((case, kind)).encode()))
    counter = CertifiedCounter(patches, rf, stride, image_size)
    expected = {p: [0, 0, 0] for p in patches}
    for B in (150, 1, 97):
        labels = torch.randint(0, 4, (B,), generator=gen)
        scores = random_scores(gen, labels, 4, H, W, kind)
        maps = ScoreMaps(scores, labels)
        counter.add(scores, labels)
        for p in patches:
            c = maps.certify(p, rf, stride, image_size)
            for i, v in enumerate((c.correct, c.certified, c.certified_global)):
                expected[p][i] += int(v.sum())
    got = counter.counts().set_index(["patch_h", "patch_w"])
    for p in patches:
        row = got.loc[p]
        assert [row.correct, row.certified, row.certified_global] == expected[p], p
    assert got.certified.sum() > 0 and (got.certified < got.correct).any()   # not vacuous
    assert got.n.iloc[0] == 248


def test_direct_loop_equals_summed_area():
    from bagcert_lib.certifier import worst_case_direct

    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 5, (40,), generator=gen)
    scores = random_scores(gen, labels, 5, 10, 10, "fractional")
    for patch, rf, stride, size in [((3, 3), 5, 1, None), ((2, 4), 3, 2, (19, 19))]:
        margin = ScoreMaps(scores, labels).worst_case(patch, rf, stride, size)[0]
        assert torch.allclose(worst_case_direct(scores, labels, patch, rf, stride, size), margin)


def test_patch_labels_are_width_by_height():
    """Labels follow the paper, width × height (§4's short-but-wide patch is "24x1"); the
    certifier keeps (h, w), and every row's label matches its patch_h / patch_w."""
    from bagcert_lib.certifier import CertifiedCounter, patch_label, patch_shape

    assert patch_label((1, 24)) == "24x1" and patch_label((12, 2)) == "2x12" and patch_label(5) == "5x5"
    assert patch_shape("24x1") == (1, 24) and patch_shape("2×12") == (12, 2)
    assert all(patch_shape(patch_label(p)) == p for p in [(1, 24), (24, 1), (3, 8), (7, 7)])
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (5,), generator=gen)
    counter = CertifiedCounter([(1, 6), (6, 1)], 3, 1, None)
    counter.add(random_scores(gen, labels, 3, 8, 8, "binary"), labels)
    rows = counter.counts()
    assert rows.patch.tolist() == ["6x1", "1x6"]
    assert (rows.patch == [f"{w}x{h}" for h, w in zip(rows.patch_h, rows.patch_w)]).all()
