"""Derandomized Smoothing (Levine & Feizi, 2020) against literal, loop-based definitions."""
import itertools

import pytest
import torch
from torch import nn

from bagcert_lib import smoothing as S
from bagcert_lib.certifier import patch_label


class TinyNet(nn.Module):
    """A small deterministic conv net on 6-channel ablated inputs. Without a conv bias, ablated
    pixels contribute nothing, so each ablation's logits depend on its visible pixels only; the
    bias of class 0 sets how often the smoothed classifier is confident enough to certify."""

    def __init__(self, C=3, seed=0, gain=2.0, bias=0.0, batchnorm=False):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.conv = nn.Conv2d(6, 8, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(8) if batchnorm else nn.Identity()
            self.fc = nn.Linear(8, C)
        with torch.no_grad():
            self.fc.weight.mul_(gain)
            self.fc.bias.zero_()
            self.fc.bias[0] = bias

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).sum((2, 3)))


def images(B, H, W, seed=0):
    return torch.rand(B, 3, H, W, generator=torch.Generator().manual_seed(seed))


def literal_mask(kind, size, H, W, i, j):
    """Keep mask of one ablation, pixel by pixel from the definition (wrap-around)."""
    m = torch.zeros(H, W, dtype=torch.bool)
    for r in range(H):
        for c in range(W):
            row_ok = kind == "column" or (r - i) % H < size
            m[r, c] = row_ok and (c - j) % W < size
    return m


def literal_masks(kind, size, H, W):
    if kind == "block":
        return [literal_mask(kind, size, H, W, i, j) for i in range(H) for j in range(W)]
    return [literal_mask(kind, size, H, W, 0, j) for j in range(W)]


def tie_broken_argmax(counts):
    """Largest count, smallest class index among ties, as a plain Python loop."""
    best = 0
    for c in range(1, len(counts)):
        if counts[c] > counts[best]:
            best = c
    return best


def touched_sets(masks, patch, H, W):
    """For every patch position, the indices of the masks that meet the patch."""
    h, w = patch
    sets = []
    for a in range(H - h + 1):
        for b in range(W - w + 1):
            sets.append([k for k, m in enumerate(masks) if m[a:a + h, b:b + w].any()])
    return sets


# --------------------------------------------------------------------------- 1. masks

@pytest.mark.parametrize("H, W, s", [(6, 6, 2), (5, 7, 3), (4, 6, 1)])
def test_block_masks(H, W, s):
    m = S.ablation_masks("block", s, (H, W))
    assert m.dtype == torch.bool and m.shape == (H * W, H, W)
    assert (m.sum((1, 2)) == s * s).all()
    assert torch.equal(m, torch.stack(literal_masks("block", s, H, W)))
    # the corner in the bottom-right pixel wraps to the top row and the left column
    last = m[H * W - 1]
    rows, cols = [H - 1] + list(range(s - 1)), [W - 1] + list(range(s - 1))
    expect = torch.zeros(H, W, dtype=torch.bool)
    expect[torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = True
    assert torch.equal(last, expect)


@pytest.mark.parametrize("H, W, b", [(6, 6, 2), (5, 7, 3), (4, 6, 1)])
def test_column_masks(H, W, b):
    m = S.ablation_masks("column", b, (H, W))
    assert m.shape == (W, H, W)
    assert (m.sum((1, 2)) == H * b).all()
    assert torch.equal(m, torch.stack(literal_masks("column", b, H, W)))
    kept = m[W - 1].all(0).nonzero().flatten().tolist()       # wraps to the first columns
    assert kept == sorted([W - 1] + list(range(b - 1)))


def test_large_ablations_keep_everything():
    assert S.ablation_masks("block", 6, (6, 6)).all()
    assert S.ablation_masks("block", 9, 6).all()
    assert S.ablation_masks("column", 7, (3, 5)).all()
    # non-square: the block saturates along the short side only
    m = S.ablation_masks("block", 5, (4, 6))
    assert (m.sum((1, 2)) == 4 * 5).all() and m.any(0).all()


def test_invalid_arguments():
    with pytest.raises(ValueError, match="kind"):
        S.ablation_masks("row", 2, 6)
    with pytest.raises(ValueError, match="size"):
        S.ablation_masks("block", 0, 6)
    with pytest.raises(ValueError, match="larger than the image"):
        S.affected_ablations("column", 2, (3, 7), (6, 6))
    model, x = TinyNet(), images(1, 4, 4)
    with pytest.raises(ValueError, match="theta"):
        S.vote_counts(model, x, "block", 2, 1.5, amp=False)
    with pytest.raises(ValueError, match="theta"):
        S.certify_model(model, [(x, torch.zeros(1))], [2], kind="block", size=2, theta=-0.1,
                        progress=False)
    with pytest.raises(ValueError, match="larger than the image"):
        S.certify_model(model, [(x, torch.zeros(1))], [5], kind="block", size=2, theta=0.3,
                        progress=False)


# --------------------------------------------------------------------------- 2. ablate

def test_ablate_encoding_and_order():
    x = images(2, 5, 6)
    masks = S.ablation_masks("block", 2, (5, 6))
    out = S.ablate(x, masks)
    A = len(masks)
    assert out.shape == (2 * A, 6, 5, 6)
    for b in range(2):
        for a in (0, 7, A - 1):
            m = masks[a].float()
            assert torch.equal(out[b * A + a, :3], x[b] * m)
            assert torch.equal(out[b * A + a, 3:], (1 - x[b]) * m)
    # a visible pixel is never all-zero, an ablated one always is
    x[0, :, 0, 0] = 0.0
    visible = (S.ablate(x, masks) != 0).any(1).view(2, A, 5, 6)
    assert torch.equal(visible, masks[None].expand(2, -1, -1, -1))


@pytest.mark.parametrize("kind", S.KINDS)
def test_ablation_sees_only_its_mask(kind):
    x = images(1, 6, 5, seed=1)
    masks = S.ablation_masks(kind, 2, (6, 5))
    ref = S.ablate(x, masks)
    for a in range(0, len(masks), 3):
        x2 = torch.where(masks[a], x, torch.rand_like(x))     # change every pixel outside a
        assert torch.equal(S.ablate(x2, masks)[a], ref[a])
        assert not torch.equal(S.ablate(x2, masks), ref)


@pytest.mark.parametrize("kind", S.KINDS)
def test_random_ablation(kind):
    x = images(8, 6, 5, seed=2)
    masks = S.ablation_masks(kind, 2, (6, 5))
    out = S.random_ablation(x, kind, 2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (8, 6, 6, 5)
    again = S.random_ablation(x, kind, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    for b in range(8):                       # each sample is image b under one of the masks
        visible = (out[b] != 0).any(0)
        a = [k for k in range(len(masks)) if torch.equal(masks[k], visible)]
        assert len(a) == 1
        assert torch.equal(out[b], S.ablate(x[b:b + 1], masks[a])[0])


# --------------------------------------------------------------------------- 3. Δ

DELTA_CASES = [(H, W, s, patch) for (H, W) in [(6, 6), (5, 7), (1, 4), (4, 3)]
               for s in (1, 2, 3, 8) for patch in [(1, 1), (2, 2), (1, 3), (3, 1), (H, W)]
               if patch[0] <= H and patch[1] <= W]


@pytest.mark.parametrize("kind", S.KINDS)
def test_affected_ablations_is_brute_force_maximum(kind):
    for H, W, s, patch in DELTA_CASES:
        masks = S.ablation_masks(kind, s, (H, W))
        brute = max(len(t) for t in touched_sets(masks, patch, H, W))
        assert S.affected_ablations(kind, s, patch, (H, W)) == brute, (H, W, s, patch)
    assert S.affected_ablations("block", 2, 2, 6) == 9
    assert S.affected_ablations("column", 2, (5, 2), (6, 6)) == 3


# --------------------------------------------------------------------------- 4. certificate

def brute_certified(counts, y, delta):
    """y stays the tie-broken argmax when y loses Δ votes and any other class gains Δ."""
    if tie_broken_argmax(counts) != y:
        return False
    for c in range(len(counts)):
        if c == y:
            continue
        mine, theirs = counts[y] - delta, counts[c] + delta
        if not (mine > theirs or (mine == theirs and y < c)):
            return False
    return True


def test_certify_counts_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    for C in (2, 3, 5):
        for _ in range(20):
            A = int(torch.randint(1, 12, (1,), generator=gen))
            counts = torch.randint(0, A + 1, (64, C), generator=gen)
            labels = torch.randint(0, C, (64,), generator=gen)
            delta = int(torch.randint(0, 4, (1,), generator=gen))
            res = S.certify_counts(counts, labels, delta)
            for b in range(64):
                cnt, y = counts[b].tolist(), int(labels[b])
                assert int(res.prediction[b]) == tie_broken_argmax(cnt)
                assert bool(res.correct[b]) == (tie_broken_argmax(cnt) == y)
                assert bool(res.certified[b]) == brute_certified(cnt, y, delta), (cnt, y, delta)
            assert res.delta == delta and res.counts.dtype == torch.long


def test_certify_counts_tie_breaking():
    counts = torch.tensor([[7, 3, 0], [3, 7, 0], [7, 3, 0], [5, 5, 0], [5, 5, 0], [8, 2, 2]])
    labels = torch.tensor([0, 1, 0, 0, 1, 0])
    res = S.certify_counts(counts, labels, 2)          # 2Δ = 4
    assert res.prediction.tolist() == [0, 1, 0, 0, 0, 0]
    assert res.correct.tolist() == [True, True, True, True, False, True]
    # 7 - 3 == 2Δ: certified for class 0 (beats class 1 on index), not for class 1 over class 0
    assert res.certified.tolist() == [True, False, True, False, False, True]
    res = S.certify_counts(torch.tensor([[3, 7, 0]]), torch.tensor([1]), 1)
    assert res.certified.tolist() == [True]
    # Δ = 0: certified iff correct under the tie-break
    res = S.certify_counts(torch.tensor([[4, 4], [4, 4]]), torch.tensor([0, 1]), 0)
    assert res.certified.tolist() == [True, False]
    assert S.certify_counts(counts, labels, 2).summary() == pytest.approx(
        {"n": 6, "clean_accuracy": 5 / 6, "certified_accuracy": 3 / 6})


@pytest.mark.parametrize("kind, size, image, patch", [
    ("column", 1, (1, 4), (1, 1)), ("column", 2, (1, 4), (1, 1)), ("column", 1, (2, 4), (2, 2)),
    ("column", 2, (2, 4), (1, 2)), ("block", 1, (2, 2), (1, 1)), ("block", 1, (2, 2), (1, 2)),
    ("block", 1, (1, 4), (1, 1)), ("block", 2, (2, 2), (1, 1)),
])
def test_certificate_sound_against_every_vote_replacement(kind, size, image, patch):
    """A = 4 ablations, C = 3 classes: every assignment of 0/1 vote vectors to the ablations;
    for every patch position, the adversary replaces the vote vectors of all ablations the patch
    meets by arbitrary 0/1 vectors. A certified prediction must survive all of them."""
    H, W = image
    C = 3
    masks = S.ablation_masks(kind, size, image)
    A = len(masks)
    assert A == 4
    delta = S.affected_ablations(kind, size, patch, image)
    vectors = torch.tensor(list(itertools.product((0, 1), repeat=C)))          # (8, C)
    configs = torch.tensor(list(itertools.product(range(len(vectors)), repeat=A)))
    votes = vectors[configs]                                                   # (N, A, C)
    counts = votes.sum(1)
    n_certified = n_broken = 0
    for y in range(C):
        res = S.certify_counts(counts, torch.full((len(counts),), y), delta)
        survives = res.correct.clone()
        for touched in touched_sets(masks, patch, H, W):
            k = len(touched)
            rest = counts - votes[:, touched].sum(1)                           # (N, C)
            # the sums of k arbitrary 0/1 vote vectors: every vector in {0..k}^C
            added = torch.tensor(list(itertools.product(range(k + 1), repeat=C)))
            attacked = rest[:, None] + added[None]                             # (N, M, C)
            pred = S.predict(attacked.view(-1, C)).view(len(counts), -1)
            survives &= (pred == y).all(1)
        assert not (res.certified & ~survives).any(), "certified but broken"
        n_certified += int(res.certified.sum())
        n_broken += int((res.correct & ~survives).sum())
    assert n_broken > 0
    # certifiable iff 2Δ <= A (all A votes for y, none for the others); else nothing is
    assert (n_certified > 0) == (2 * delta <= A)


# --------------------------------------------------------------------------- 5. votes

def loop_vote_counts(model, x, kind, size, theta):
    """Votes by a plain loop over images and literal masks, one forward pass per ablation."""
    B, _, H, W = x.shape
    model.eval()
    counts = None
    for b in range(B):
        for m in literal_masks(kind, size, H, W):
            m = m.float()
            inp = torch.cat([x[b] * m, (1 - x[b]) * m])[None]
            p = model(inp).float().softmax(1)[0]
            if counts is None:
                counts = torch.zeros(B, len(p), dtype=torch.long)
            counts[b] += (p >= theta).long()
    return counts


@pytest.mark.parametrize("kind", S.KINDS)
def test_vote_counts_matches_loop_and_chunking(kind):
    model = TinyNet(C=4, seed=3, gain=1.0, batchnorm=True)
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
    x = images(3, 5, 6, seed=4)
    ref = loop_vote_counts(model, x, kind, 2, 0.3)
    model.train()
    for chunk in (1, 2, 5, 7, 1024):
        counts = S.vote_counts(model, x, kind, 2, 0.3, amp=False, chunk=chunk)
        assert counts.dtype == torch.long and torch.equal(counts, ref), chunk
    assert model.training                                       # mode restored
    assert ref.sum(1).ne(0).any()
    A = S.num_ablations(kind, (5, 6))
    assert torch.equal(S.vote_counts(model, x, kind, 2, 0.0, amp=False), torch.full((3, 4), A))
    # theta > 0.5: at most one vote per ablation
    assert (S.vote_counts(model, x, kind, 2, 0.6, amp=False).sum(1) <= A).all()


@pytest.mark.parametrize("kind", S.KINDS)
def test_ablation_softmax_gives_the_votes(kind):
    """The softmax of every ablation (Mask-DS's features) is what the votes count: (p ≥ θ)
    summed over the ablations equals vote_counts for every chunking, and rows are probabilities."""
    model = TinyNet(C=4, seed=3, gain=1.0)
    x = images(3, 5, 6, seed=4)
    A = S.num_ablations(kind, (5, 6))
    for chunk in (1, 5, 1024):
        p = S.ablation_softmax(model, x, kind, 2, amp=False, chunk=chunk)
        assert p.shape == (3, A, 4) and p.dtype == torch.float32
        assert torch.allclose(p.sum(2), torch.ones(3, A))
        for theta in (0.2, 0.3):
            assert torch.equal((p >= theta).sum(1), S.vote_counts(model, x, kind, 2, theta, amp=False,
                                                                  chunk=chunk))
    masks = S.ablation_masks(kind, 2, (5, 6))
    one = model(S.ablate(x[1:2], masks[A - 1:])).softmax(1)[0]
    assert torch.allclose(p[1, A - 1], one, atol=1e-6)                  # image 1, last ablation


def test_vote_counts_chunk_bounds_forward_batch():
    sizes = []

    class Spy(TinyNet):
        def forward(self, x):
            sizes.append(len(x))
            return super().forward(x)

    x = images(3, 4, 4)
    S.vote_counts(Spy(), x, "block", 2, 0.3, amp=False, chunk=7)
    assert max(sizes) <= 7 and sum(sizes) == 3 * 16
    sizes.clear()
    S.vote_counts(Spy(), x, "block", 2, 0.3, amp=False, chunk=2)    # chunk < batch
    assert max(sizes) <= 2 and sum(sizes) == 3 * 16


# --------------------------------------------------------------------------- 6. soundness

@pytest.mark.parametrize("kind, patch, bias, seed, flips", [
    ("block", (2, 2), 1.0, 0, False), ("column", (2, 2), 3.0, 0, False),
    ("column", (2, 2), 2.0, 1, True), ("column", (1, 1), 1.5, 1, True)])
def test_certified_predictions_survive_patches(kind, patch, bias, seed, flips):
    """Every patch position, random/black/white contents: a certified smoothed prediction
    never changes, and no class gains or loses more than Δ votes. In the cases marked ``flips``
    some uncertified predictions do change, so the patches have teeth."""
    H = W = 6
    size = 2
    model = TinyNet(seed=seed, gain=2.0, bias=bias)
    x = images(16, H, W, seed=0)
    counts = S.vote_counts(model, x, kind, size, 0.3, amp=False)
    delta = S.affected_ablations(kind, size, patch, (H, W))
    res = S.certify_counts(counts, S.predict(counts), delta)
    assert 0 < int(res.certified.sum()) < 16

    gen = torch.Generator().manual_seed(1)
    contents = [torch.rand(3, *patch, generator=gen) for _ in range(3)]
    contents += [torch.zeros(3, *patch), torch.ones(3, *patch)]
    patched = []
    for a in range(H - patch[0] + 1):
        for b in range(W - patch[1] + 1):
            for content in contents:
                xp = x.clone()
                xp[:, :, a:a + patch[0], b:b + patch[1]] = content
                patched.append(xp)
    patched = torch.stack(patched, 1)                                # (B, P, 3, H, W)
    P = patched.shape[1]
    attacked = S.vote_counts(model, patched.flatten(0, 1), kind, size, 0.3, amp=False,
                             chunk=4096).view(16, P, -1)
    change = attacked - counts[:, None]
    assert 0 < change.abs().max() <= delta
    pred = S.predict(attacked.flatten(0, 1)).view(16, P)
    stays = (pred == res.prediction[:, None]).all(1)
    assert stays[res.certified].all()
    assert (~stays).any() == flips


# --------------------------------------------------------------------------- 7. certify_model

def test_certify_model(monkeypatch):
    model = TinyNet(seed=0, gain=2.0, bias=1.5)
    batches = [(images(6, 6, 6, seed=k), torch.tensor([0, 0, 0, 1, 2, 0])) for k in range(2)]
    calls = []
    real = S.vote_counts

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(S, "vote_counts", counting)
    patches = [1, (2, 2), (2, 3), 3, 6]
    df = S.certify_model(model, batches, patches, kind="block", size=2, theta=0.3, amp=False,
                         progress=False)
    assert len(calls) == len(batches)                        # one vote count per batch
    assert list(df.columns) == ["patch", "patch_h", "patch_w", "condition", "n",
                                "clean_accuracy", "certified_accuracy", "forward_s", "certify_s"]
    assert df["patch"].tolist() == [patch_label(p) for p in patches]
    assert df["patch_h"].tolist() == [1, 2, 2, 3, 6] and df["patch_w"].tolist() == [1, 2, 3, 3, 6]
    assert (df["condition"] == "DS").all() and (df["n"] == 12).all()
    assert df.attrs["n"] == 12 and df.attrs["kind"] == "block"
    assert df.attrs["size"] == 2 and df.attrs["theta"] == 0.3
    assert df.attrs["forward_s"] > 0 and df.attrs["certify_s"] >= 0
    assert (df["forward_s"] == df.attrs["forward_s"]).all()

    # the same numbers by hand
    certified = {p: 0 for p in patches}
    correct = 0
    for x, y in batches:
        counts = real(model, x, "block", 2, 0.3, amp=False)
        for p in patches:
            r = S.certify_counts(counts, y, S.affected_ablations("block", 2, p, (6, 6)))
            certified[p] += int(r.certified.sum())
        correct += int(r.correct.sum())
    assert df["clean_accuracy"].iloc[0] == correct / 12
    assert df["certified_accuracy"].tolist() == [certified[p] / 12 for p in patches]

    chain = df.set_index("patch").loc[["1x1", "2x2", "3x2", "3x3", "6x6"], "certified_accuracy"]
    assert chain.is_monotonic_decreasing
    assert chain.iloc[0] > 0 and chain.iloc[-1] == 0
    assert (df["certified_accuracy"] <= df["clean_accuracy"]).all()


# --------------------------------------------------------------------------- 8. ResNet-18

def count_params(model):
    return sum(p.numel() for p in model.parameters())


def test_resnet18():
    # kuangliu/pytorch-cifar ResNet18 has 11,173,962 parameters; 6 input channels add 64*3*9
    assert count_params(S.resnet18()) == 11_173_962 + 64 * 3 * 9
    small = S.resnet18(num_classes=5, width=8)
    assert count_params(small) < count_params(S.resnet18(num_classes=5, width=16))
    x = S.random_ablation(torch.rand(2, 3, 32, 32), "column", 4)
    small.eval()
    assert small(x).shape == (2, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = small(x)
    assert out.shape == (2, 5) and out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert S.resnet18(in_channels=3, width=8)(torch.rand(2, 3, 32, 32)).shape == (2, 10)


# --------------------------------------------------------------------------- 8. attack

@pytest.mark.parametrize("kind, size, patch", [("block", 2, (2, 2)), ("column", 2, (2, 3)),
                                               ("block", 3, (1, 2)), ("column", 3, (4, 1))])
def test_patch_ablations_are_the_masks_a_patch_meets(kind, size, patch):
    """Row p of patch_ablations: the ablations keeping a pixel of the patch at position p, from
    the literal masks; every position meets Δ of them."""
    H, W = 6, 7
    sees = S.patch_ablations(kind, size, patch, (H, W))
    brute = touched_sets(literal_masks(kind, size, H, W), patch, H, W)
    assert [row.nonzero().flatten().tolist() for row in sees] == brute
    assert (sees.sum(1) == S.affected_ablations(kind, size, patch, (H, W))).all()


@pytest.mark.parametrize("kind, H, W, patch, bias, seed", [
    ("block", 8, 8, (2, 2), 0.75, 2), ("block", 6, 6, (1, 1), 0.75, 2),
    ("column", 6, 12, (2, 2), 1.0, 0), ("column", 6, 12, (2, 2), 1.5, 1)])
def test_attack_counts_exactly_and_never_breaks_a_certified_image(kind, H, W, patch, bias, seed):
    """The PGD attack on DS: each iterate's votes (the other ablations' clean votes plus those the
    patch meets) give the same verdict as counting all ablations again; no class gains or loses
    more than Δ votes; no certified image is broken, and some correct uncertified ones are (the
    attack has teeth)."""
    model = TinyNet(seed=seed, gain=2.0, bias=bias)
    x = images(24, H, W, seed=0)
    counts = S.vote_counts(model, x, kind, 2, 0.3, amp=False)
    y = S.predict(counts)                    # every image starts correct
    res = S.attack(model, x, y, patch, kind=kind, size=2, theta=0.3, steps=20, step_size=0.1,
                   amp=False, generator=torch.Generator().manual_seed(0))
    assert res.met == res.delta == S.affected_ablations(kind, 2, patch, (H, W))
    assert res.clean_correct.all() and 0 < int(res.certificate.certified.sum()) < 24
    assert torch.equal(res.stepwise, ~res.adv_correct) and torch.equal(res.flipped, ~res.adv_correct)
    assert res.summary()["flipped"] == int((~res.adv_correct).sum())
    assert (res.vote_change <= res.delta).all() and res.vote_change.max() > 0
    assert res.adv_correct[res.certificate.certified].all()
    assert not res.adv_correct.all()
    outside = torch.ones_like(x, dtype=torch.bool)
    for b in range(24):
        r, c = int(res.row[b]), int(res.col[b])
        outside[b, :, r:r + patch[0], c:c + patch[1]] = False
    assert torch.equal(res.images[outside], x[outside])            # only the patch changed
    if kind == "column":
        assert (res.row == (H - patch[0]) // 2).all()               # centred rows


def test_attack_puts_the_patch_where_the_label_has_most_votes_over_the_runner_up():
    """The position: argmax over positions of Σ v_a(y) − v_a(c*) over the ablations it meets."""
    model = TinyNet(seed=1, gain=2.0, bias=2.0)
    x = images(8, 6, 6, seed=3)
    probs = S.ablation_softmax(model, x, "block", 2, amp=False)
    votes = (probs >= 0.3).float()
    y = S.predict(votes.sum(1).long())
    res = S.attack(model, x, y, (2, 2), kind="block", size=2, theta=0.3, steps=0, amp=False)
    sets = touched_sets(literal_masks("block", 2, 6, 6), (2, 2), 6, 6)
    for b in range(8):
        t, c = int(y[b]), int(res.target[b])
        counts = votes[b].sum(0)
        assert c != t and counts[c] == max(counts[k] for k in range(3) if k != t)
        score = [float(votes[b, s, t].sum() - votes[b, s, c].sum()) for s in sets]
        assert int(res.row[b]) * 5 + int(res.col[b]) == score.index(max(score))


@pytest.fixture(scope="module")
def block_run(tmp_path_factory, colour_folder):
    """A tiny DS block run (block 4) on the colour images, trained by the one training loop."""
    from bagcert_lib.config import profile_config
    from bagcert_lib.train import train

    cfg = profile_config("smoke", dataset="imagefolder", data=str(colour_folder), method="ds-block",
                         width=8, epochs=6, lr=0.01, train_size=None, eval_size=12, test_size=12)
    return train(cfg, tmp_path_factory.mktemp("run"), progress=False)["run_dir"]


def test_the_run_attack_writes_its_record_and_refuses_an_unsound_certificate(block_run, monkeypatch):
    """runs.attack_ds (the sweep's attack-ds step): attack_ds.json holds n, Δ, the ablations the
    patch met (Δ) and the largest change of a class's votes (at most Δ), accuracies with
    adversarial and certified ≤ clean, no certified image broken. The tiny model is certified
    against 16 × 16 patches (2Δ = 722 of 1,024 votes) and cannot be against 24 × 24 ones
    (2Δ > 1,024), where the attack breaks images. A certificate planted unsound (every correct
    image called certified) and a Δ planted too small each raise."""
    import dataclasses
    import json

    from bagcert_lib import runs

    kw = dict(n=12, steps=10, step_size=0.1, progress=False)
    rec = runs.attack_ds(block_run, patch=(16, 16), **kw)
    saved = json.loads((block_run / "attack_ds.json").read_text())
    assert saved["n"] == rec["n"] == 12 and saved["certified_broken"] == 0
    assert saved["kind"] == "block" and saved["delta"] == saved["ablations_met"] == 19 * 19
    assert 0 < saved["vote_change"] <= saved["delta"]
    assert 0 < saved["certified_accuracy"] <= saved["clean_accuracy"]
    assert saved["adversarial_accuracy"] <= saved["clean_accuracy"]
    big = runs.attack_ds(block_run, patch=(24, 24), **kw)
    assert big["certified_accuracy"] == 0 and big["broken"] > 0 and big["vote_change"] <= 27 * 27
    real = S.certify_counts
    monkeypatch.setattr(S, "certify_counts", lambda *a: dataclasses.replace(
        real(*a), certified=real(*a).correct))
    with pytest.raises(runs.UnsoundCertificate, match="certified images broken"):
        runs.attack_ds(block_run, patch=(24, 24), **kw)
    monkeypatch.setattr(S, "certify_counts", real)
    monkeypatch.setattr(S, "affected_ablations", lambda *a: 19 * 19 - 1)
    with pytest.raises(runs.UnsoundCertificate, match="met 361 ablations"):
        runs.attack_ds(block_run, patch=(16, 16), **{**kw, "steps": 0})


def test_the_command_line_attacks_a_ds_run(block_run, capsys):
    """``python -m bagcert_lib attack`` on a DS block run runs DS's attack (attack_ds.json) with
    the options given; PatchCleanser's options are refused for it."""
    import json

    from bagcert_lib.__main__ import main

    main(["attack", str(block_run), "--n", "6", "--steps", "2", "--patch", "16"])
    saved = json.loads((block_run / "attack_ds.json").read_text())
    assert (saved["n"], saved["steps"], saved["patch"], saved["delta"]) == (6, 2, [16, 16], 19 * 19)
    assert "attack_ds.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["attack", str(block_run), "--pairs"])
    assert exit_.value.code == 2 and "options of PatchCleanser's attack" in capsys.readouterr().err
