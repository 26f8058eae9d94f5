"""Mask-DS (PatchGuard's robust masking on DS column ablations; Xiang et al., 2021): its provable
analysis against a plain reference and brute force over every patch position, a linear-window
analysis caught as unsound on an edge patch, the receptive field of a DS column model, the
patch attack, and the certification loop."""
import dataclasses
import itertools

import numpy as np
import pytest
import torch

from bagcert_lib import mask_ds as M
from bagcert_lib import smoothing as S
from bagcert_lib.certifier import patch_label
from bagcert_lib.config import profile_config
from bagcert_lib.data import load_dataset
from bagcert_lib.methods import method_for
from bagcert_lib.train import train

BIG = 1e6       # "as much evidence as the adversary likes"


# --------------------------------------------------------------------------- plain definitions

def affected(b, w, c, N):
    """Positions j whose band j … j+b−1 (mod N) meets the columns c … c+w−1, by the definition."""
    return [j for j in range(N) if any((j + t) % N in range(c, c + w) for t in range(b))]


def cyclic(N, k):
    return [[(s + i) % N for i in range(k)] for s in range(N)]


def linear(N, k):
    return [list(range(x, x + k)) for x in range(N - k + 1)]


def members(windows, N):
    m = torch.zeros(len(windows), N, dtype=torch.bool)
    for r, w in enumerate(windows):
        m[r, w] = True
    return m


def masked_np(v, windows, T):
    """Algorithm 1 written out plainly, vectorised over plays: v (P, C, N) -> (P, C)."""
    total = v.sum(-1)
    best = np.max(np.stack([v[..., w].sum(-1) for w in windows], -1), -1)
    on = (total > 0) & (best > T * total)
    return total - np.where(on, best, 0.0)


def wins_np(g, y):
    """(P,) bool: class y strictly wins, a tie (within 10⁻⁹ of the evidence) counting as a loss."""
    others = np.delete(g, y, axis=1).max(1)
    return g[:, y] > others + 1e-9 * (1 + np.abs(g).sum(1))


def reference_certified(u, y, b, w, T=0.0):
    """Algorithm 2 by loops over the patch positions c and the cyclic windows (no shortcuts)."""
    B, C, N = u.shape
    k = min(b + w - 1, N)
    u = u.numpy()
    out = torch.zeros(B, dtype=torch.bool)
    for i in range(B):
        ok = bool(wins_np(masked_np(u[i][None], cyclic(N, k), T), int(y[i]))[0])
        for c in range(N - w + 1):
            if not ok:
                break
            A = affected(b, w, c, N)
            upper = (u[i].sum(1) - u[i][:, A].sum(1)) / (1 - T)
            t = u[i, y[i]].copy()
            t[A] = 0
            lower = t.sum() - max(t[win].sum() for win in cyclic(N, k))
            upper[y[i]] = -np.inf
            ok = bool(lower > upper.max() + M.TOL * (1 + u[i].sum()))
        out[i] = ok
    return out


def brute_force_robust(u, y, b, w, windows=None, T=0.0, grid=None, only=None):
    """Every patch position c (c … c+w−1 inside the image) and, on the positions its bands meet,
    the adversary's plays: c_t → 0 and every other class → BIG, or every assignment of ``grid``
    values to those C × k entries. Does the masked prediction (``windows``: the defense's, cyclic
    by default) stay strictly y at each? Also returns the position of a break, per sample."""
    B, C, N = u.shape
    windows = windows or cyclic(N, min(b + w - 1, N))
    robust = torch.ones(B, dtype=torch.bool)
    where = torch.full((B,), -1)
    for i in range(B):
        if only is not None and not only[i]:
            continue
        for c in range(N - w + 1):
            A = affected(b, w, c, N)
            if grid is None:
                plays = np.array([[0.0 if cl == y[i] else BIG for cl in range(C) for _ in A]])
            else:
                plays = np.array(list(itertools.product(grid, repeat=C * len(A))))
            v = np.repeat(u[i].numpy()[None], len(plays), 0)
            v[:, :, A] = plays.reshape(len(plays), C, len(A))
            if not wins_np(masked_np(v, windows, T), int(y[i])).all():
                robust[i], where[i] = False, c
                break
    return robust, where


def maps(B, C, N, seed):
    """Softmax-like features (each position a probability vector) leaning toward the label by a
    per-sample strength; some samples carry a run of positions (wrapping past the end, too)
    confident in a wrong class, which the defense should mask."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (B,), generator=g)
    k = 6 * torch.rand(B, 1, 1, generator=g, dtype=torch.float64)
    z = torch.randn(B, C, N, generator=g, dtype=torch.float64)
    z[torch.arange(B), y] += k[:, :, 0]
    for i in (torch.rand(B, generator=g) < 0.4).nonzero().squeeze(1).tolist():
        s, L = torch.randint(0, N, (1,), generator=g).item(), torch.randint(1, 4, (1,), generator=g).item()
        wrong = (int(y[i]) + 1 + torch.randint(0, C - 1, (1,), generator=g).item()) % C
        z[i, wrong, [(s + j) % N for j in range(L)]] += 8.0
    return z.softmax(1), y


# --------------------------------------------------------------------------- (a) brute force

def test_windows_are_the_bands_a_patch_meets():
    """Row c of patch_windows is exactly the set of positions whose (wrapping) band meets the
    patch at columns c … c+w−1; it is one cyclic window of k = min(b+w−1, W) positions, DS's Δ."""
    for N, b, w in [(8, 1, 1), (8, 3, 1), (8, 3, 2), (8, 4, 3), (7, 6, 3), (32, 4, 5), (32, 4, 24)]:
        P = M.patch_windows(b, w, N)
        k = M.window_width(b, w, N)
        assert P.shape == (N - w + 1, N) and k == S.affected_ablations("column", b, (1, w), (1, N))
        D = M.defense_windows(N, k)
        assert torch.equal(D, members(cyclic(N, k), N))
        for c in range(N - w + 1):
            assert P[c].nonzero().flatten().tolist() == affected(b, w, c, N)
            assert (D == P[c]).all(1).any()                       # one of the defense's windows
    assert M.patch_windows(3, 1, 8)[0].nonzero().flatten().tolist() == [0, 6, 7]   # wraps


@pytest.mark.parametrize("b,w", [(1, 1), (2, 1), (3, 1), (2, 2), (3, 2), (1, 3)])
def test_certificate_is_the_plain_algorithm_and_exact_against_brute_force(b, w):
    """T = 0: certified equals the loop reference of Algorithm 2, and equals robustness against
    the adversary's best play at every patch position (c_t → 0, the others → BIG on the positions
    the patch's bands meet): the analysis is sound and, for this adversary, exact."""
    N = 10                                      # k ≤ 4 windows of 10: some certify
    u, y = maps(60, 3, N, seed=10 * b + w)
    cert = M.certify(u, y, b, (1, w))
    assert torch.equal(cert.certified, reference_certified(u, y, b, w))
    robust, _ = brute_force_robust(u, y, b, w)
    windows = cyclic(N, min(b + w - 1, N))
    correct = torch.tensor([bool(wins_np(masked_np(u[i].numpy()[None], windows, 0.0), int(y[i]))[0])
                            for i in range(len(y))])
    assert torch.equal(cert.correct, correct)
    assert not (cert.certified & ~robust).any(), "certified but broken by brute force"
    assert torch.equal(cert.certified, robust & cert.correct)
    assert cert.certified.any() and (cert.correct & ~cert.certified).any(), "need both kinds"


@pytest.mark.parametrize("T", [0.0, 0.3])
@pytest.mark.parametrize("b,w,C", [(1, 1, 3), (2, 1, 2), (1, 2, 2)])
def test_certificate_holds_on_a_grid_of_adversarial_values(b, w, C, T):
    """Every assignment of a grid of values (0 … BIG) to the C × k affected entries at every patch
    position, also with a detection threshold T > 0, where masking may switch off."""
    u, y = maps(30, C, 6, seed=7 + b + 3 * w)
    cert = M.certify(u, y, b, (1, w), threshold=T)
    assert torch.equal(cert.certified, reference_certified(u, y, b, w, T))
    robust, _ = brute_force_robust(u, y, b, w, T=T, grid=(0.0, 0.3, 1.0, 3.0, BIG),
                                   only=cert.certified)
    assert not (cert.certified & ~robust).any()
    assert cert.certified.any()


# --------------------------------------------------------------------------- (b) linear windows

def test_a_linear_window_analysis_is_caught_on_an_edge_patch():
    """With bands wrapping, a patch at column 0 meets positions W−b+1 … W−1 and 0. An analysis
    over linear windows [x, x+k) only (the defense still masking cyclic windows) never looks at
    that window. Here the true class has 0.5 everywhere and the wrong class 0.45 at positions 1,
    4 and 5: every linear window holds some of the wrong class's evidence, the edge window {6, 7,
    0} none, so the linear analysis certifies, and the patch at column 0 breaks it."""
    N, b, w = 8, 3, 1
    u = torch.zeros(1, 2, N, dtype=torch.float64)
    u[0, 0] = 0.5
    u[0, 1, [1, 4, 5]] = 0.45
    y = torch.tensor([0])
    k = M.window_width(b, w, N)
    _, lin, _, _ = M.certify_windows(u, y, M.defense_windows(N, k), members(linear(N, k), N))
    assert lin.all(), "the linear-window analysis certifies"
    robust, where = brute_force_robust(u, y, b, w)
    assert not robust.any() and where.tolist() == [0], "the edge patch breaks it"
    cert = M.certify(u, y, b, (1, w))
    assert cert.correct.all() and not cert.certified.any() and cert.col.tolist() == [0]


def test_the_linear_defense_and_analysis_are_caught():
    """Linear windows in the defense and in the analysis: a patch at an edge column spreads its
    evidence over positions no linear window holds together, so the masked defense keeps some of
    it; brute force against that defense breaks samples the linear analysis certifies, only at
    edge patches (c < b − 1), and none that ours certifies."""
    N, b, w = 8, 3, 1
    k = M.window_width(b, w, N)
    u, y = maps(40, 3, N, seed=3)
    lin_w = linear(N, k)
    _, lin, _, _ = M.certify_windows(u, y, members(lin_w, N), members(lin_w, N))
    robust_lin, where = brute_force_robust(u, y, b, w, windows=lin_w, only=lin)
    broken = lin & ~robust_lin
    assert broken.any(), "the brute force should break a sample the linear analysis certifies"
    assert (where[broken] < b - 1).all()
    ours = M.certify(u, y, b, (1, w)).certified
    assert ours.any() and not (ours & ~brute_force_robust(u, y, b, w, only=ours)[0]).any()


# --------------------------------------------------------------------------- real models

def test_a_patch_changes_only_the_positions_its_bands_meet():
    """The receptive-field property the analysis rests on, on a DS column ResNet-18: changing a
    patch's pixels changes exactly the features of the positions in its window (wrapping)."""
    torch.manual_seed(0)
    model = S.resnet18(num_classes=3, width=4).eval()
    H = W = 12
    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    for b in (1, 3):
        base = M.features(model, x, b, amp=False)
        assert base.shape == (2, 3, W) and torch.allclose(base.sum(1), torch.ones(2, W))
        for (h, w) in [(2, 1), (5, 3), (12, 2)]:
            windows = M.patch_windows(b, w, W)
            for c in sorted({0, 1, 5, W - w}):
                x2 = x.clone()
                x2[:, :, 3:3 + h, c:c + w] = torch.rand(2, 3, min(h, H - 3), w, generator=g)
                changed = (M.features(model, x2, b, amp=False) != base).any(0).any(0)
                assert torch.equal(changed, windows[c]), (b, h, w, c)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, colour_folder):
    cfg = profile_config("smoke", dataset="imagefolder", data=str(colour_folder), method="ds-column",
                         width=8, epochs=6, lr=0.01, train_size=None, eval_size=12, test_size=12)
    out = train(cfg, tmp_path_factory.mktemp("run"), progress=False)
    data = load_dataset("imagefolder", str(colour_folder), progress=False)
    return out, cfg, data.x_test.float() / 255, data.y_test


def test_certify_model_rows_and_the_ds_rows_unchanged(trained, monkeypatch):
    """certify_model: smoothing.certify_model's columns, condition Mask-DS, the numbers of
    certify per batch; through Method.evaluate a column run gets DS's rows (equal to
    smoothing.certify_model's) first, then Mask-DS's, from one forward pass per batch."""
    out, cfg, x, y = trained
    model = out["model"].eval()
    idx = torch.arange(0, len(y), 10)
    batches = [(x[idx[:2]], y[idx[:2]]), (x[idx[2:]], y[idx[2:]])]
    patches = [(1, 1), (5, 5), (2, 12)]
    df = M.certify_model(model, batches, patches, size=cfg.ablation_size, amp=False, progress=False)
    cols = ["patch", "patch_h", "patch_w", "condition", "n", "clean_accuracy", "certified_accuracy",
            "forward_s", "certify_s"]
    assert list(df.columns) == cols and set(df.condition) == {"Mask-DS"}
    assert df.patch.tolist() == [patch_label(p) for p in patches] and (df.n == len(idx)).all()
    for p in patches:
        row = df.set_index("patch").loc[patch_label(p)]
        certs = [M.certify(M.features(model, xb, cfg.ablation_size, amp=False), yb,
                           cfg.ablation_size, p) for xb, yb in batches]
        assert row.certified_accuracy == sum(int(c.certified.sum()) for c in certs) / len(idx)
        assert row.clean_accuracy == sum(int(c.correct.sum()) for c in certs) / len(idx)
    assert (df.certified_accuracy <= df.clean_accuracy).all()

    cfg = dataclasses.replace(cfg, amp=False)
    both = method_for(cfg).evaluate(model, iter(batches), patches, cfg, "cpu")
    ds = S.certify_model(model, batches, patches, kind="column", size=cfg.ablation_size,
                         theta=cfg.theta, amp=False, progress=False)
    assert both.condition.tolist() == ["DS"] * 3 + ["Mask-DS"] * 3
    key = ["patch", "patch_h", "patch_w", "condition", "n", "clean_accuracy", "certified_accuracy"]
    assert both.iloc[:3][key].reset_index(drop=True).equals(ds[key])
    assert both.iloc[3:][key].reset_index(drop=True).equals(df[key])
    calls = []
    real = S.ablation_softmax
    monkeypatch.setattr(S, "ablation_softmax", lambda *a, **k: calls.append(1) or real(*a, **k))
    method_for(cfg).evaluate(model, iter(batches), patches, cfg, "cpu")
    assert len(calls) == len(batches)                        # one forward pass per batch


def test_the_tiny_model_learned(trained):
    out, cfg, x, y = trained
    u = M.features(out["model"], x, cfg.ablation_size, amp=False)
    assert (u.argmax(1) == y[:, None]).float().mean() > 0.9      # not a constant classifier


@pytest.mark.parametrize("patch", [(1, 1), (5, 5), (12, 12), (16, 16)])
def test_attack_never_breaks_a_certified_image(trained, patch):
    """PGD at the weakest patch position: no certified image is broken (on the colour data
    Mask-DS certifies up to 12 × 12, k = 15 of 32 positions); from 16 × 16 on (k > W/2, never
    certifiable) the attack breaks some images."""
    out, cfg, x, y = trained
    model = out["model"].eval()
    sub = torch.arange(0, len(y), 8)
    res = M.attack(model, x[sub], y[sub], patch, size=cfg.ablation_size, steps=10,
                   step_size=0.1, amp=False, generator=torch.Generator().manual_seed(0))
    assert not (res.flipped & res.certificate.certified).any()
    if patch[1] <= 5:
        assert res.certificate.certified.sum() > 0, "the tiny model should certify some images"
    if patch == (16, 16):
        assert not res.certificate.certified.any() and res.flipped.sum() > 0, "no teeth"
    if res.flipped.any():
        H, W = x.shape[-2:]
        k = M.window_width(cfg.ablation_size, patch[1], W)
        u = M.features(model, res.images[res.flipped], cfg.ablation_size, amp=False)
        assert (M.predict(u, M.defense_windows(W, k)) != y[sub][res.flipped]).all()
        changed = (res.images - x[sub]).abs().sum(1) > 0               # only the patch changed
        rows = torch.arange(H)[None, :, None]
        cols = torch.arange(W)[None, None, :]
        r, c = res.row[:, None, None], res.col[:, None, None]
        inside = (rows >= r) & (rows < r + patch[0]) & (cols >= c) & (cols < c + patch[1])
        assert not (changed & ~inside).any()


def test_the_run_attack_writes_its_record_and_refuses_an_unsound_certificate(trained, monkeypatch):
    """runs.attack_mask_ds (the sweep's attack-ds-column step): attack_mask_ds.json holds its n,
    accuracies with adversarial ≤ clean and certified ≤ clean, and no certified image broken; a
    planted unsound certificate (every correct image called certified) raises UnsoundCertificate."""
    import dataclasses
    import json

    from bagcert_lib import runs

    out, cfg, x, y = trained                  # 16 × 16: the colour model is certified at 5 × 5 throughout
    rec = runs.attack_mask_ds(out["run_dir"], n=12, patch=(16, 16), steps=10, step_size=0.1, batch_size=6,
                              progress=False)
    saved = json.loads((out["run_dir"] / "attack_mask_ds.json").read_text())
    assert saved["n"] == rec["n"] == 12 and saved["certified_broken"] == 0
    assert saved["adversarial_accuracy"] <= saved["clean_accuracy"]
    assert saved["certified_accuracy"] <= saved["clean_accuracy"]
    assert saved["broken"] > 0                         # the attack bites: the check below can fail
    real = M.certify
    monkeypatch.setattr(M, "certify", lambda *a, **k: dataclasses.replace(
        real(*a, **k), certified=real(*a, **k).correct))
    with pytest.raises(runs.UnsoundCertificate, match="certified images broken"):
        runs.attack_mask_ds(out["run_dir"], n=12, patch=(16, 16), steps=10, step_size=0.1, batch_size=6,
                            progress=False)
