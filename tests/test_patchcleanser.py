"""PatchCleanser (bagcert_lib.patchcleanser): the mask set covers every patch, double masking
follows Algorithm 1, and no certified image is changed by any patch we can construct."""
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from bagcert_lib import patchcleanser as pc
from bagcert_lib.config import profile_config


def authors_mask_set(img, patch, num_mask=-1, mask_stride=-1):
    """``gen_mask_set`` of inspire-group/PatchCleanser utils/defense.py lines 16-47, on numpy."""
    if mask_stride > 0:
        stride = (mask_stride, mask_stride)
    else:
        stride = tuple(int(np.ceil((img[a] - patch[a] + 1) / num_mask)) for a in (0, 1))
    size = tuple(min(patch[a] + stride[a] - 1, img[a]) for a in (0, 1))
    idx = []
    for a in (0, 1):
        lst = list(range(0, img[a] - size[a] + 1, stride[a]))
        if (img[a] - size[a]) % stride[a] != 0:
            lst.append(img[a] - size[a])
        idx.append(lst)
    masks = []
    for x in idx[0]:
        for y in idx[1]:
            m = np.ones(img, dtype=bool)
            m[x:x + size[0], y:y + size[1]] = False
            masks.append(~m)                      # True = hidden
    return np.stack(masks)


@pytest.mark.parametrize("patch", [(1, 1), (2, 2), (5, 5), (8, 8), (16, 16), (1, 24), (3, 8),
                                   (8, 3), (24, 1), (12, 2), (32, 32), (31, 1)])
@pytest.mark.parametrize("k", [1, 2, 3, 6, 7])
def test_mask_set_is_the_authors(patch, k):
    ms = pc.mask_set(patch, (32, 32), k)
    np.testing.assert_array_equal(ms.hide().numpy(), authors_mask_set((32, 32), patch, num_mask=k))


def test_mask_set_with_stride_is_the_authors():
    for patch, s in itertools.product([(3, 3), (5, 5), (2, 9)], [1, 2, 4, 5]):
        ms = pc.mask_set(patch, (20, 20), stride=s)
        assert ms.stride == (s, s)
        np.testing.assert_array_equal(ms.hide().numpy(),
                                      authors_mask_set((20, 20), patch, mask_stride=s))


def test_mask_set_5x5_on_cifar():
    ms = pc.mask_set(5, 32)                # k = 6: s = ⌈28 / 6⌉ = 5, m = 5 + 5 - 1 = 9
    assert (ms.stride, ms.size, len(ms)) == ((5, 5), (9, 9), 36)
    assert ms.rows == ms.cols == (0, 5, 10, 15, 20, 23)


def brute_covered(hide, patch):
    h, w = patch
    M, H, W = hide.shape
    return torch.tensor([[any(bool(hide[m, r:r + h, c:c + w].all()) for m in range(M))
                          for c in range(W - w + 1)] for r in range(H - h + 1)])


@pytest.mark.parametrize("image", [(8, 8), (11, 7), (32, 32)])
def test_every_patch_position_is_covered(image):
    """Exhaustive over patch shapes, masks per axis and strides; the small image also by loops."""
    H, W = image
    shapes = [(h, w) for h in range(1, H + 1) for w in range(1, W + 1)] if H * W < 100 else \
        [(h, h) for h in range(1, 17)] + [(1, 24), (2, 12), (3, 8), (4, 6), (6, 4), (8, 3), (12, 2), (24, 1)]
    for patch in shapes:
        for k, s in [(k, None) for k in (1, 2, 3, 6, 9)] + [(None, s) for s in (1, 2, 3, 5)]:
            ms = pc.mask_set(patch, image, k, stride=s)
            ok = pc.covered(ms.hide(), patch)
            assert ok.shape == (H - patch[0] + 1, W - patch[1] + 1) and bool(ok.all()), (patch, k, s)
            if H * W < 100 and patch[0] <= 3 and patch[1] <= 3:
                assert bool(brute_covered(ms.hide(), patch).all())


def test_figure_shapes_have_masks_on_cifar():
    from bagcert_lib.runs import figure_patches

    for p in figure_patches():
        ms = pc.mask_set(p, 32)
        assert 25 <= len(ms) <= 36 and bool(pc.covered(ms.hide(), p).all())


def test_broken_mask_set_is_caught():
    ms = pc.mask_set(2, 8, 3)
    caught = 0
    for i in range(len(ms)):
        broken = ms.without(i)
        gaps = ~pc.covered(broken.hide(), ms.patch)
        assert bool(gaps.any()) == (not bool(brute_covered(broken.hide(), ms.patch).all()))
        if gaps.any():
            caught += 1
            with pytest.raises(ValueError, match="does not cover"):
                pc.check_covering(broken)
            with pytest.raises(ValueError, match="does not cover"):
                pc.double_masking(CodeModel(), torch.full((1, 1, 8, 8), 0.1), broken)
    assert caught == len(ms)                  # each of the 9 masks is needed


def test_invalid_arguments():
    with pytest.raises(ValueError, match="larger"):
        pc.mask_set((33, 1), 32)
    with pytest.raises(ValueError):
        pc.mask_set(5, 32, 0)
    with pytest.raises(ValueError):
        pc.mask_set(5, 32, stride=0)


# --------------------------------------------------------------------------- brute force

#: A fake classifier whose answer the adversary controls: a visible "trigger" pixel of value
#: 0.86 + 0.03 c votes for class c; without triggers the answer is the class c of the background
#: 0.1 + 0.1 c. Masked pixels (0.5) are neither.
TRIGGERS = [0.86, 0.89, 0.92]


class CodeModel(nn.Module):
    def __init__(self, policy="first", classes=3):
        super().__init__()
        self.policy, self.num_classes = policy, classes
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        v = x[:, 0].flatten(1)                                      # (N, H W)
        trig = v >= 0.85
        code = ((v - 0.86) / 0.03).round().clamp(0, self.num_classes - 1).long()
        back = ((v - 0.1) / 0.1).round().clamp(0, self.num_classes - 1).long()
        visible_back = (v < 0.45)
        votes_back = torch.nn.functional.one_hot(back, self.num_classes) * visible_back[..., None]
        label = votes_back.sum(1).argmax(1)
        if self.policy == "majority":
            votes = (torch.nn.functional.one_hot(code, self.num_classes) * trig[..., None]).sum(1)
            t = votes.argmax(1)
        else:
            pos = torch.arange(v.shape[1]).expand_as(v)
            key = torch.where(trig, pos if self.policy == "last" else -pos, -10 ** 9)
            t = code.gather(1, key.argmax(1, keepdim=True)).squeeze(1)
        label = torch.where(trig.any(1), t, label)
        return torch.nn.functional.one_hot(label, self.num_classes).float() * 10 + self.dummy


def adversarial_images(clean, patch, alphabet):
    """Every placement of every content over ``alphabet`` (values per pixel)."""
    h, w = patch
    H, W = clean.shape[-2:]
    contents = torch.tensor(list(itertools.product(alphabet, repeat=h * w))).view(-1, 1, h, w)
    out, where = [], []
    for r in range(H - h + 1):
        for c in range(W - w + 1):
            x = clean.expand(len(contents), -1, -1, -1).clone()
            x[:, :, r:r + h, c:c + w] = contents
            out.append(x)
            where += [(r, c)] * len(contents)
    return torch.cat(out), torch.tensor(where)


ALPHABET = TRIGGERS[:2] + [pc.MASK_VALUE, 0.1, 0.2]


@pytest.mark.parametrize("policy", ["first", "last", "majority"])
@pytest.mark.parametrize("label", [0, 2])
def test_brute_force_every_position_and_content(policy, label):
    """8 × 8 images, 2 × 2 patch, 9 masks: 49 positions × 625 contents, each pixel a trigger for
    either wrong class, grey, or another class's background. A certified clean image keeps its
    label under all of them; with any one mask removed, some patch changes it."""
    model = CodeModel(policy)
    ms = pc.mask_set(2, 8, 3)
    clean = torch.full((1, 1, 8, 8), 0.1 + 0.1 * label)
    y = torch.tensor([label])
    res = pc.double_masking(model, clean, ms, y)
    assert bool(res.certified[0]) and int(res.prediction[0]) == label
    adv, _ = adversarial_images(clean, (2, 2), ALPHABET)
    out = pc.double_masking(model, adv, ms)
    assert bool((out.prediction == label).all())
    assert bool((out.one_mask != label).any())          # the patch does change one-mask answers
    if policy == "first":
        for i in range(len(ms)):
            broken = ms.without(i)
            out = pc.double_masking(model, adv, broken, check=False)
            assert bool((out.prediction != label).any()), f"removing mask {i} went unnoticed"


def test_double_masking_matches_the_precomputed_reference():
    """Algorithm 1 computed on demand equals the authors' precomputed form on full two-mask maps,
    on images where rounds disagree (cases I, II and III all occur)."""
    model = CodeModel("first")
    ms = pc.mask_set(2, 8, 3)
    torch.manual_seed(0)
    clean = torch.full((1, 1, 8, 8), 0.2)
    adv, _ = adversarial_images(clean, (2, 2), [0.86, 0.92, 0.5, 0.1])
    scattered = clean.repeat(200, 1, 1, 1).flatten(1)      # triggers no one mask covers
    for n in (2, 3, 4):
        idx = torch.randint(64, (200, 1))
        scattered.scatter_(1, (idx + torch.randint(1, 64, (200, 1))) % 64,
                           torch.tensor(TRIGGERS)[torch.randint(3, (200, 1))])
        scattered.scatter_(1, idx, torch.tensor(TRIGGERS)[torch.randint(3, (200, 1))])
    adv = torch.cat([adv[torch.randperm(len(adv))[:300]], scattered.view(-1, 1, 8, 8)])
    res = pc.double_masking(model, adv, ms, torch.full((len(adv),), 1))
    hide = ms.hide()
    M = len(hide)
    maps = torch.stack([model(pc.apply_masks(adv, (hide[i] | hide[j]).expand(len(adv), -1, -1))).argmax(1)
                        for i in range(M) for j in range(M)], 1).view(len(adv), M, M)
    assert torch.equal(res.prediction, pc.double_masking_from_map(maps, 3))
    assert torch.equal(res.certified, pc.certified_from_map(maps, torch.full((len(adv),), 1)))
    agree = (res.one_mask == res.one_mask[:, :1]).all(1)
    second = ~agree
    assert agree.any() and second.any()
    won = second & (res.prediction != pc._majority(res.one_mask, 3))
    assert won.any() and (second & ~won).any()         # case II and case III both happen


def test_decision_rule_holds_against_any_labels_off_the_covering_mask():
    """Map level: with the covering mask r*'s row and column equal to y, no labelling of the
    other two-mask entries (random, all one wrong class, wrong rows) moves Algorithm 1 off y."""
    gen = torch.Generator().manual_seed(0)
    M, C, y = 9, 4, 1
    for trial in range(3000):
        star = trial % M
        kind = trial % 3
        if kind == 0:
            maps = torch.randint(C, (M, M), generator=gen)
        else:
            t = int(torch.randint(C - 1, (), generator=gen)) + (y == 0)
            maps = torch.full((M, M), 2 if t == y else t)
            if kind == 2:
                maps[torch.randint(M, (3,), generator=gen)] = y
        maps = torch.minimum(maps, maps.T) if trial % 2 else maps   # symmetric or not
        maps[star, :] = y
        maps[:, star] = y
        assert int(pc.double_masking_from_map(maps[None], C)[0]) == y


# --------------------------------------------------------------------------- a trained model

class TinyNet(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                 nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))

    def forward(self, x):
        return self.net(x)


def blobs(n, gen, size=10, blob=4):
    """Noise with one 4 × 4 blob in the class's colour channel somewhere: a mask or a patch
    can hide it, so some images are certified and some are not."""
    y = torch.randint(3, (n,), generator=gen)
    x = torch.rand(n, 3, size, size, generator=gen) * 0.45
    r = torch.randint(size - blob + 1, (n,), generator=gen)
    c = torch.randint(size - blob + 1, (n,), generator=gen)
    for i in range(n):
        x[i, y[i], r[i]:r[i] + blob, c[i]:c[i] + blob] += 0.5
    return x.clamp(0, 1), y


@pytest.fixture(scope="module")
def tiny():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        x, y = blobs(64, gen)
        x = pc.random_cutout(x, 2, 6, generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = blobs(40, gen)
    return model.eval(), x, y


def test_trained_model_brute_force(tiny):
    """Every 2 × 2 patch position on 10 × 10 images, contents black, white, grey, noise and each
    class's pure colour (a blob's): the double-masking prediction of every certified image stays its label."""
    model, x, y = tiny
    ms = pc.mask_set(2, 10, 3)
    res = pc.double_masking(model, x, ms, y)
    cert = res.certified.nonzero().flatten()
    assert 5 <= len(cert) < len(x)                   # some certified, some not
    gen = torch.Generator().manual_seed(1)
    contents = [torch.zeros(3, 2, 2), torch.ones(3, 2, 2), torch.full((3, 2, 2), 0.5),
                torch.rand(3, 2, 2, generator=gen)] + [torch.eye(3)[c][:, None, None].expand(3, 2, 2)
                                                      for c in range(3)]
    for b in cert.tolist():
        adv = []
        for r, c, p in itertools.product(range(9), range(9), contents):
            a = x[b].clone()
            a[:, r:r + 2, c:c + 2] = p
            adv.append(a)
        out = pc.double_masking(model, torch.stack(adv), ms)
        assert bool((out.prediction == y[b]).all()), b


def test_certify_model_counts_images_and_shows_the_shape_under_way(tiny, capsys):
    """The rows add up over batches, and the progress bar (on stderr) names each batch's shape
    and images while their double masking runs, without changing a number."""
    model, x, y = tiny
    batches = [(x[:25], y[:25]), (x[25:], y[25:])]
    kw = dict(num_masks=3, amp=False)
    shown = pc.certify_model(model, batches, [1, 2], progress=True, **kw)
    err = capsys.readouterr().err
    assert "shape 1/2 (1x1) of images 1-25" in err and "shape 2/2 (2x2) of images 26-40" in err
    quiet = pc.certify_model(model, batches, [1, 2], progress=False, **kw)
    assert capsys.readouterr().err == ""
    cols = ["patch", "n", "clean_accuracy", "certified_accuracy", "passes"]
    assert shown[cols].equals(quiet[cols]) and (shown.n == 40).all()
    whole = pc.double_masking(model, x, pc.mask_set(2, 10, 3), y, amp=False)
    assert round(shown.certified_accuracy.iloc[1] * 40) == int(whole.certified.sum())


def test_pgd_never_flips_a_certified_image(tiny):
    model, x, y = tiny
    ms = pc.mask_set(2, 10, 3)
    res = pc.double_masking(model, x, ms, y)
    gen = torch.Generator().manual_seed(0)
    flipped_any = False
    for r, c in [(0, 0), (4, 4), (8, 3), (2, 7)]:
        out = pc.patch_attack(model, x, y, ms, r, c, steps=20, generator=gen)
        assert not bool((out["broken"] & res.certified).any()), (r, c)
        flipped_any |= bool((out["broken"] & ~res.certified).any())
        # the images the attack ends with: the covering masks' predictions are the clean ones
        assert torch.equal(out["images"][:, :, :r], x[:, :, :r])
    assert flipped_any                                    # the attack does break uncertified ones


# --------------------------------------------------------------------------- training pieces

def test_random_cutout():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 32, 32, generator=gen)
    out = pc.random_cutout(x, 2, None, generator=torch.Generator().manual_seed(1))
    hidden = (out == pc.MASK_VALUE).all(1) & (x != pc.MASK_VALUE).any(1)
    assert pc.cutout_size(32) == 18
    frac = hidden.float().mean((1, 2))
    assert bool((frac > 0).all()) and bool((frac <= 2 * 18 * 18 / 1024 + 1e-6).all())
    assert torch.equal(out[~hidden[:, None].expand_as(x)], x[~hidden[:, None].expand_as(x)])
    again = pc.random_cutout(x, 2, None, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert torch.equal(pc.random_cutout(x, 0), x)
    # one hole of side 4: at most 4 × 4 pixels, a full square where it is not clipped
    one = pc.random_cutout(x, 1, 4, generator=gen)
    n = (one == pc.MASK_VALUE).all(1).flatten(1).sum(1)
    assert bool((n <= 16).all()) and bool((n == 16).any())


def test_config_and_method(tmp_path, colour_folder):
    from bagcert_lib.methods import PatchCleanser, method_for
    from bagcert_lib.train import train

    cfg = profile_config("smoke", dataset="imagefolder", data=str(colour_folder), method="patchcleanser",
                         width=4, epochs=1, train_size=None, eval_size=12)
    assert isinstance(method_for(cfg), PatchCleanser)
    assert cfg.run_name() == "smoke-patchcleanser-w4-e1-k6-seed0"
    with pytest.raises(ValueError):
        profile_config("smoke", method="patchcleanser", num_masks=0)
    out = train(cfg, tmp_path / "run", progress=False)
    assert out["finished"] and out["model"].linear.in_features == 32
    assert out["model"].conv1.in_channels == 3
    batches = [(torch.rand(6, 3, 32, 32), torch.randint(3, (6,)))]
    df = method_for(cfg).evaluate(out["model"], batches, [(5, 5), (1, 24)], cfg, "cpu")
    assert list(df.condition) == ["PC", "PC"] and list(df.masks) == [36, 30]
    assert (df.certified_accuracy <= df.clean_accuracy).all() and (df.passes >= 6 * 30).all()



def test_the_run_attack_writes_its_record_and_refuses_a_broken_certificate(tmp_path, colour_folder,
                                                                           monkeypatch):
    """runs.attack_patchcleanser (the sweep's attack-patchcleanser step) on a trained run:
    attack_patchcleanser.json holds its n, accuracies with certified and adversarial ≤ clean, and
    no certified image broken; an attack that (planted) breaks every image raises
    UnsoundCertificate, counting the certified ones."""
    import json

    from bagcert_lib import runs
    from bagcert_lib.train import train

    cfg = profile_config("smoke", dataset="imagefolder", data=str(colour_folder), method="patchcleanser",
                         width=4, epochs=2, lr=0.01, train_size=None, eval_size=12, test_size=12)
    train(cfg, tmp_path / "run", progress=False)
    kw = dict(n=12, positions=2, steps=5, batch_size=5, progress=False)      # batches of 5, 5, 2
    rec = runs.attack_patchcleanser(tmp_path / "run", **kw)
    saved = json.loads((tmp_path / "run" / "attack_patchcleanser.json").read_text())
    assert saved["n"] == rec["n"] == 12 and saved["masks"] == 36 and saved["certified_broken"] == 0
    assert saved["certified_accuracy"] <= saved["clean_accuracy"]
    assert saved["adversarial_accuracy"] <= saved["clean_accuracy"]
    assert saved["certified_accuracy"] > 0                  # so the planted attack below breaks some
    from bagcert_lib.__main__ import main                   # the command line passes its options

    main(["attack", str(tmp_path / "run"), "--n", "4", "--steps", "1", "--positions", "1", "--pairs"])
    cli = json.loads((tmp_path / "run" / "attack_patchcleanser.json").read_text())
    assert (cli["n"], cli["steps"], cli["positions"], cli["pairs"]) == (4, 1, 1, True)
    real = pc.patch_attack
    monkeypatch.setattr(pc, "patch_attack", lambda *a, **k: {
        **(out := real(*a, **k)), "broken": torch.ones_like(out["broken"])})
    certified = round(saved["certified_accuracy"] * 12)
    with pytest.raises(runs.UnsoundCertificate, match=f"{certified} certified images broken"):
        runs.attack_patchcleanser(tmp_path / "run", **kw)


def test_grid_is_at_bagcerts_training_flops():
    """``grids.patchcleanser``: each run's training FLOPs (model.training_flops, as provenance.json
    counts them) within 5 % of BagCert's cpu grid (width 32, 6 epochs) and of the compute study's
    width 64 × 16 epochs, both at RF 7."""
    from bagcert_lib.model import conv_macs, training_flops
    from bagcert_lib.scaling import training_flops as bagcert_flops
    from bagcert_lib.sweep import grid_jobs
    from bagcert_lib.train import build_model

    jobs = grid_jobs("patchcleanser", profile="cpu")
    assert [j.steps for j in jobs] == [("train", "certify", "attack-patchcleanser")] * 2
    flops = []
    for j in jobs:
        cfg = profile_config("cpu", **j.extra)
        images = cfg.epochs * (50_000 // cfg.batch_size) * cfg.batch_size
        flops.append(training_flops(conv_macs(build_model(cfg)), images))
    for got, want in zip(flops, (bagcert_flops(32, 6), bagcert_flops(64, 16))):
        assert abs(got / want - 1) < 0.05, (got, want)
