"""The App. A.2 PGD patch attack never breaks a certified sample, and does break others."""
import pytest
import torch

from bagcert_lib import certify, patch_attack, region_scores
from bagcert_lib.config import profile_config
from bagcert_lib.data import load_dataset
from bagcert_lib.train import train


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, colour_folder):
    cfg = profile_config("smoke", dataset="imagefolder", data=str(colour_folder), rf=5, width=8,
                         epochs=6, margin=0.5, lr=0.01, train_size=None, eval_size=120)
    out = train(cfg, tmp_path_factory.mktemp("run"), progress=False)
    data = load_dataset("imagefolder", str(colour_folder), progress=False)
    return out["model"].eval(), data.x_test.float() / 255, data.y_test


@pytest.mark.parametrize("patch", [(5, 5), (2, 12), (20, 20)])
def test_attack_never_flips_certified(tiny_model, patch):
    model, x, y = tiny_model
    scores = region_scores(model, x)
    cert = certify(scores, y, patch, model.receptive_field, model.stride)
    res = patch_attack(model, x, y, patch, steps=25, generator=torch.Generator().manual_seed(0))
    assert not (res.flipped & cert.certified).any()
    assert (res.adv_correct >= cert.certified).all()
    assert (res.adv_correct <= res.clean_correct).all()
    # the patch stays inside the image and only the patch pixels change
    changed = (res.images != x).any(1)
    for b in range(len(y)):
        r, c = res.row[b].item(), res.col[b].item()
        outside = changed[b].clone()
        outside[r:r + patch[0], c:c + patch[1]] = False
        assert not outside.any()
    assert res.images.min() >= 0 and res.images.max() <= 1
    if patch == (5, 5):
        assert cert.certified.sum() > 0, "the tiny model should certify some samples at 5x5"


def test_attack_breaks_uncertified_samples(tiny_model):
    model, x, y = tiny_model
    res = patch_attack(model, x, y, (24, 24), steps=25, generator=torch.Generator().manual_seed(0))
    assert res.flipped.sum() > 0, "PGD with a 24x24 patch should flip some predictions"
    # the reported adversarial images really are misclassified
    s = region_scores(model, res.images[res.flipped])
    assert not certify(s, y[res.flipped], 1, model.receptive_field).correct.any()


def _reference_attack(model, x, y, patch, steps, step_size=0.025, margin=1.0, seed=0):
    """App. A.2 written out plainly: the whole batch takes every PGD step; an image counts as
    broken at the first iterate that flips it, and that iterate is kept."""
    from bagcert_lib.attack import patch_mask
    from bagcert_lib.certifier import ScoreMaps
    from bagcert_lib.heads import heaviside

    cert = ScoreMaps(region_scores(model, x, amp=False), y).certify(patch, model.receptive_field, model.stride,
                                                          image_size=tuple(x.shape[-2:]))
    mask = patch_mask(x.shape, cert.row, cert.col, patch, x.device)
    adv = x * (1 - mask) + torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)) * mask
    best, broken = adv.clone(), torch.zeros(len(y), dtype=torch.bool)
    for step in range(steps + 1):
        adv.requires_grad_(True)
        scores = heaviside(model(adv).float())
        wrong = ~ScoreMaps(scores.detach(), y).correct
        best[wrong & ~broken] = adv.detach()[wrong & ~broken]
        broken |= wrong
        if step == steps:
            break
        S = scores.mean((2, 3))
        d = (S.gather(1, y[:, None]) - S.gather(1, cert.target[:, None])).squeeze(1)
        (grad,) = torch.autograd.grad(-torch.clamp(d, max=margin).sum(), adv)
        with torch.no_grad():
            adv = x * (1 - mask) + (adv + step_size * grad.sign() * mask).clamp(0, 1) * mask
    best[~broken] = adv.detach()[~broken]
    return best, broken


def test_attack_equals_the_plain_pgd_loop(tiny_model):
    """patch_attack spends compute only on unbroken images; the result must be the plain loop's."""
    model, x, y = tiny_model
    for q in model.parameters():
        q.requires_grad_(False)
    best, broken = _reference_attack(model, x, y, (20, 20), steps=15)
    res = patch_attack(model, x, y, (20, 20), steps=15, amp=False, generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.adv_correct, res.clean_correct & ~broken)
    assert torch.equal(res.images, best)
    assert 0 < broken.sum() < len(y), f"{int(broken.sum())} of {len(y)} broken: pick a patch that breaks some"
