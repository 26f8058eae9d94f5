"""PatchGuard's robust masking (Mask-BN; Xiang et al., 2021): its provable analysis against brute
force, a plain reference of Algorithm 2, the receptive field and the patch attack."""
import itertools

import pytest
import torch

from bagcert_lib import patchguard as pg
from bagcert_lib.certifier import _Geometry, _region_ranges
from bagcert_lib.config import profile_config
from bagcert_lib.data import load_dataset
from bagcert_lib.local_logits import local_logits, window_shape
from bagcert_lib.train import train

BIG = 1e6       # "as much evidence as the adversary likes" (c_h = ∞)


def _regions(shape, patch, rf):
    r0, r1, c0, c1 = _region_ranges(_Geometry(shape, patch, rf, 1, None), "cpu")
    return [(slice(int(r0[a]), int(r1[a]) + 1), slice(int(c0[b]), int(c1[b]) + 1))
            for a in range(len(r0)) for b in range(len(c0))]


def masked(u, window, T):
    """Algorithm 1 written out plainly (``masking_defense``): (C,) masked evidence."""
    out = u.sum((1, 2)).clone()
    for c in range(u.shape[0]):
        best = windows(u[c], window).max()
        if out[c] > 0 and best > T * out[c]:
            out[c] -= best
    return out


def windows(m, window):
    """Sums of the (H, W) map m over every window inside it."""
    return m.unfold(0, window[0], 1).unfold(1, window[1], 1).sum((-2, -1))


def wins(g, y):
    others = torch.cat([g[:y], g[y + 1:]])
    return bool(g[y] > others.max() + 1e-9 * (1 + g.abs().sum()))


def brute_force_robust(u, y, patch, rf, T=0.0, grid=None, only=None):
    """Every patch position l and, on R(l), the adversary's plays: c_t → 0 and every other
    class → BIG (the worst case when ũ only grows with each value, T = 0), or every assignment
    of ``grid`` values to the C × R(l) entries. Is the masked prediction strictly y at each?
    ``only``: the samples to search (bool (B,)); the others are reported robust."""
    B, C, H, W = u.shape
    window = window_shape(patch, rf, 1, (H, W), (H, W))
    robust = torch.ones(B, dtype=torch.bool)
    for b in range(B):
        if only is not None and not only[b]:
            continue
        for rows, cols in _regions(u.shape, patch, rf):
            n = (rows.stop - rows.start) * (cols.stop - cols.start)
            plays = (itertools.product(grid, repeat=C * n) if grid is not None else
                     [tuple(0.0 if c == y[b] else BIG for c in range(C) for _ in range(n))])
            for play in plays:
                v = u[b].clone()
                v[:, rows, cols] = torch.tensor(play, dtype=v.dtype).view(C, rows.stop - rows.start, -1)
                if not wins(masked(v, window, T), int(y[b])):
                    robust[b] = False
                    break
            if not robust[b]:
                break
    return robust


def _maps(B, C, H, W, seed):
    """Non-negative evidence leaning toward the label by a per-sample strength, with a bright
    spot of the true class in some samples (which the defense masks)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (B,), generator=g)
    k = torch.rand(B, 1, 1, 1, generator=g, dtype=torch.float64)
    u = (1 - k) * torch.rand(B, C, H, W, generator=g, dtype=torch.float64)
    u[torch.arange(B), y] += k[:, 0] ** 3 * 0.8
    spot = torch.rand(B, generator=g) < 0.4
    for b in spot.nonzero().squeeze(1).tolist():
        i, j = torch.randint(0, H - 1, (2,), generator=g).tolist()
        u[b, y[b], i:i + 2, j:j + 2] += 3.0
    return u, y


def reference_certified(u, y, patch, rf, T=0.0):
    """Algorithm 2 by loops: for every window w, L(w) > max_c U_c(w) (no shortcuts)."""
    B, C, H, W = u.shape
    kh, kw = window_shape(patch, rf, 1, (H, W), (H, W))
    out = torch.zeros(B, dtype=torch.bool)
    for b in range(B):
        ok = wins(masked(u[b], (kh, kw), T), int(y[b]))
        for i, j in itertools.product(range(H - kh + 1), range(W - kw + 1)):
            if not ok:
                break
            inside = u[b, :, i:i + kh, j:j + kw].sum((1, 2))
            upper = (u[b].sum((1, 2)) - inside) / (1 - T)
            t = u[b, y[b]].clone()
            t[i:i + kh, j:j + kw] = 0
            lower = t.sum() - windows(t, (kh, kw)).max()
            upper[y[b]] = float("-inf")
            ok = bool(lower > upper.max() + pg.TOL * (1 + u[b].sum()))
        out[b] = ok
    return out


@pytest.mark.parametrize("patch,rf", [((1, 1), 1), ((2, 1), 1), ((1, 1), 3), ((2, 2), 3), ((1, 3), 5)])
def test_certificate_matches_the_plain_algorithm_and_brute_force(patch, rf):
    u, y = _maps(40, 4, 9, 9, seed=rf * 7 + patch[0] + 3 * patch[1])
    cert = pg.certify(u, y, patch, rf)
    assert torch.equal(cert.certified, reference_certified(u, y, patch, rf))
    bf = brute_force_robust(u, y, patch, rf)
    assert not (cert.certified & ~bf).any(), "certified but broken by brute force"
    assert cert.certified.any() and (cert.correct & ~cert.certified).any(), "need both kinds"


@pytest.mark.parametrize("T", [0.0, 0.3])
@pytest.mark.parametrize("patch", [(1, 1), (1, 2)])
def test_certificate_holds_on_a_grid_of_adversarial_values(patch, T):
    """RF 1, 2-3 classes: every assignment of a grid of values (0 … BIG) to C × R(l), also with a
    detection threshold T > 0, where masking may switch off."""
    C = 3 if patch == (1, 1) else 2
    u, y = _maps(24, C, 4, 4, seed=11 + patch[1])
    grid = (0.0, 0.5, 1.0, 3.0, BIG)
    cert = pg.certify(u, y, patch, 1, threshold=T)
    bf = brute_force_robust(u, y, patch, 1, T=T, grid=grid, only=cert.certified)
    assert not (cert.certified & ~bf).any()
    assert cert.certified.any()


def test_an_unsound_variant_is_caught():
    """Bounding the true class by its evidence outside w, forgetting that the defense then masks
    the true class's best remaining window, certifies samples that brute force breaks."""
    u, y = _maps(60, 3, 7, 7, seed=5)
    patch, rf = (1, 1), 3
    kh, kw = window_shape(patch, rf, 1, (7, 7), (7, 7))
    cert = pg.certify(u, y, patch, rf)
    # the variant: L(w) = Σ_{∉w} u_t
    from bagcert_lib.local_logits import window_sums
    S = window_sums(u, (kh, kw))
    outside = u.sum((2, 3))[:, :, None, None] - S
    upper = outside.clone()
    upper[torch.arange(60), y] = float("-inf")
    unsound = cert.correct & (outside[torch.arange(60), y] > upper.amax(1)).flatten(1).all(1)
    bf = brute_force_robust(u, y, patch, rf, only=unsound | cert.certified)
    assert (unsound & ~bf).any(), "the brute force should break a sample the variant certifies"
    assert not (cert.certified & ~bf).any()


def test_every_affected_region_fits_one_window():
    for size, rf, (ph, pw) in [(32, 7, (5, 5)), (32, 13, (24, 1)), (32, 5, (1, 1)), (32, 13, (16, 16))]:
        kh, kw = window_shape((ph, pw), rf, 1, (size, size), (size, size))
        for rows, cols in _regions((1, 1, size, size), (ph, pw), rf):
            assert rows.stop - rows.start <= kh <= size and cols.stop - cols.start <= kw <= size
        assert (kh, kw) == (min(ph + rf - 1, size), min(pw + rf - 1, size))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, colour_folder):
    cfg = profile_config("smoke", dataset="imagefolder", data=str(colour_folder), rf=5, width=8,
                         epochs=6, lr=0.01, train_size=None, eval_size=120, method="mask-bn",
                         eval_patch=3)
    out = train(cfg, tmp_path_factory.mktemp("run"), progress=False)
    data = load_dataset("imagefolder", str(colour_folder), progress=False)
    return out, data.x_test.float() / 255, data.y_test


def test_a_patch_changes_logits_inside_one_window_only(trained):
    """The receptive-field property the analysis rests on, on the trained scorer."""
    out, x, _ = trained
    model = out["model"].eval()
    base = local_logits(model, x[:4], amp=False)
    g = torch.Generator().manual_seed(0)
    for ph, pw in [(3, 3), (2, 12), (1, 1)]:
        kh, kw = window_shape((ph, pw), 5, 1, (32, 32), (32, 32))
        for a, b in [(0, 0), (32 - ph, 32 - pw), (10, 7)]:
            x2 = x[:4].clone()
            x2[:, :, a:a + ph, b:b + pw] = torch.rand(4, 3, ph, pw, generator=g)
            changed = (local_logits(model, x2, amp=False) != base).any(0).any(0)
            rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
            assert rows.max() - rows.min() + 1 <= kh and cols.max() - cols.min() + 1 <= kw


def test_trains_and_certifies_through_the_loop(trained):
    out, x, y = trained
    assert out["finished"] and out["history"].clean_accuracy.iloc[-1] > 0.9
    df = pg.certify_model(out["model"], [(x, y)], [(1, 1), (3, 3), (2, 12)], progress=False)
    assert set(df.condition) == {"Mask-BN"} and (df.certified_accuracy <= df.clean_accuracy).all()
    z = local_logits(out["model"], x)
    one = pg.certify(z, y, (3, 3), 5)
    row = df.set_index("patch").loc["3x3"]
    assert row.certified_accuracy == pytest.approx(one.certified.float().mean().item())
    window = window_shape((3, 3), 5, 1, (32, 32), (32, 32))
    assert row.clean_accuracy == pytest.approx((pg.predict(z, window) == y).float().mean().item())


@pytest.mark.parametrize("patch", [(1, 1), (3, 3), (2, 12)])
def test_attack_never_flips_certified(trained, patch):
    out, x, y = trained
    model = out["model"].eval()
    res = pg.attack(model, x, y, patch, steps=25, generator=torch.Generator().manual_seed(0))
    assert not (res.flipped & res.certificate.certified).any()
    if patch == (3, 3):
        assert res.certificate.certified.sum() > 0, "the tiny model should certify some samples"
    if res.flipped.any():
        window = window_shape(patch, 5, 1, (32, 32), (32, 32))
        z = local_logits(model, res.images[res.flipped])
        assert (pg.predict(z, window) != y[res.flipped]).all()


def test_attack_has_teeth(trained):
    """Robust masking certifies almost every test image of the colour data even at 24 × 24, so
    the attack's strength is shown where masking is off (T = 1: the plain clipped sum), through
    the same code: it flips predictions there, and none that Mask-BN certifies."""
    out, x, y = trained
    gen = torch.Generator().manual_seed(0)
    plain = pg.attack(out["model"], x, y, (24, 24), steps=25, threshold=1.0, generator=gen)
    assert plain.flipped.sum() > 0
    masked_ = pg.attack(out["model"], x, y, (24, 24), steps=25, generator=gen)
    assert not (masked_.flipped & masked_.certificate.certified).any()
