"""The compute study: FLOPs counted from the model, and the curve fits with their bounds."""
import numpy as np
import torch
import pytest

from bagcert_lib import scaling
from bagcert_lib.model import cifar_scorer, conv_macs, num_parameters

TABLE1_RF7_PARAMETERS = 38e6      # Table 1: RF 7 at width 768 has 38 M parameters


def test_macs_are_conv_weights_times_pixels_and_match_table1():
    """At stride 1 every convolution runs at 32x32, so MACs = conv weights x 1,024; at width 768
    that is Table 1's parameter count (38 M for RF 7) times 1,024 to within BatchNorm's share."""
    for width in (8, 32, 768):
        m = cifar_scorer(7, width)
        conv_weights = sum(c.weight.numel() for c in m.modules() if isinstance(c, torch.nn.Conv2d))
        assert conv_macs(m) == conv_weights * 32 * 32
    wide = cifar_scorer(7, 768)
    assert abs(num_parameters(wide) - TABLE1_RF7_PARAMETERS) / TABLE1_RF7_PARAMETERS < 0.01
    assert abs(conv_macs(wide) / 1024 - num_parameters(wide)) / num_parameters(wide) < 0.002


def test_paper_compute_is_about_4_eflop():
    """Width 768, 350 epochs of 49,920 images (520 batches of 96): 6 x 38.7 GMAC x 1.75e7 images."""
    assert scaling.paper_flops() == pytest.approx(4.06e18, rel=0.01)
    assert scaling.training_flops(48, 40) == pytest.approx(1.83e15, rel=0.01)   # cpu_long
    assert scaling.training_flops(64, 48) >= 2 * scaling.training_flops(48, 40)  # the largest run


@pytest.mark.parametrize("form", scaling.FORMS)
def test_fits_recover_their_own_curves(form):
    x = np.linspace(13, 16, 7)
    truth = {"saturating": {"form": form, "A": 0.8, "B": 0.5, "k": 0.9, "x0": 13.0},
             "power-law error": {"form": form, "a": 2.0, "b": -0.2},
             "log-linear": {"form": form, "a": -1.5, "b": 0.13}}[form]
    y = scaling.evaluate(truth, x)
    p = scaling.fit(x, y, form)
    assert np.allclose(scaling.evaluate(p, x), y, atol=2e-3)
    assert np.allclose(scaling.evaluate(p, [17.0]), scaling.evaluate(truth, [17.0]), atol=0.02)


def test_bootstrap_band_contains_the_fit_and_needs_three_computes():
    rng = np.random.default_rng(0)
    x = np.repeat(np.linspace(13, 16, 5), 3)
    y = 0.7 - 0.5 * np.exp(-(x - 13)) + rng.normal(0, 0.01, len(x))
    band = scaling.bootstrap(x, y, [15.0, 18.0], n=200)
    p = scaling.evaluate(scaling.fit(x, y), [15.0, 18.0])
    lo, hi = np.quantile(band, [0.025, 0.975], axis=0)
    assert (lo <= p + 1e-9).all() and (p <= hi + 1e-9).all() and (hi - lo)[1] >= (hi - lo)[0]
    with pytest.raises(ValueError, match="3 or more computes"):
        scaling.bootstrap([13, 13, 14], [0.1, 0.2, 0.3], [15.0])


def test_the_saturating_ceiling_comes_from_the_data_or_sits_at_its_bound():
    """A curve that bends gets its ceiling from the data; a straight line in log-compute does not
    determine one, and the fit says so (``at_bound``) instead of passing the bound off as a fit."""
    x = np.repeat(np.linspace(13, 16, 6), 2)
    bends = 0.7 - 0.5 * np.exp(-1.5 * (x - 13))
    p = scaling.fit(x, bends, "saturating")
    assert p["A"] == pytest.approx(0.7, abs=0.01) and not p["at_bound"]
    line = -1.5 + 0.13 * x
    q = scaling.fit(x, line, "saturating")
    assert q["A"] == 1.0 and q["at_bound"]


def test_certified_accuracy_stays_below_clean_accuracy():
    """Certified ≤ clean at every compute: a certified curve is capped by the clean curve of the
    same form fitted to the same runs, and a saturating one's ceiling by the clean ceiling."""
    x = np.repeat(np.linspace(13, 16, 5), 2)
    clean = 0.6 - 0.4 * np.exp(-1.2 * (x - 13))            # bends to 60 %
    cert = -1.6 + 0.13 * x                                    # a straight line, 48 % at 16
    for form in scaling.FORMS:
        bound = scaling.fit(x, clean, form)
        p = scaling.fit(x, cert, form, bound)
        far = np.linspace(13, 19, 13)
        assert (scaling.evaluate(p, far) <= scaling.evaluate(bound, far) + 1e-12).all(), form
    sat = scaling.fit(x, cert, "saturating", scaling.fit(x, clean, "saturating"))
    assert sat["A"] <= 0.6 + 0.01 and sat["at_bound"]
    below = cert - 0.02 + 0.01 * np.sin(x)                      # clean just under the certified line
    boot = scaling.bootstrap(x, cert, [19.0], "log-linear", n=50, clean=below)
    same = scaling.bootstrap(x, below, [19.0], "log-linear", n=50)   # the same resamples (seed 0)
    assert np.allclose(boot, same)               # held at the clean curve of each resample


def test_the_spread_across_forms_holds_every_form_and_its_band():
    import pandas as pd

    rng = np.random.default_rng(1)
    x = np.repeat(np.linspace(13, 15.5, 6), 2)
    clean = 0.3 + 0.17 * (x - 13) + rng.normal(0, 0.01, len(x))
    study = pd.DataFrame({"flops": 10 ** x, "clean": clean, "certified": 0.4 * clean})
    pred = pd.concat([scaling.predict(study, m, 1e18, n_boot=100) for m in ("clean", "certified")])
    assert sorted(pred.form.unique()) == sorted(scaling.FORMS) and (pred.prediction <= 1).all()
    s = scaling.spread(pred)
    for m, g in pred.groupby("metric"):
        assert s.loc[m, "low"] == g.low.min() and s.loc[m, "high"] == g.high.max()
        assert s.loc[m, "lowest"] <= g.prediction.min() + 1e-12 and s.loc[m, "highest"] >= g.prediction.max() - 1e-12
        assert (g.low <= g.prediction + 1e-9).all() and (g.prediction <= g.high + 1e-9).all()
    cert, clean_ = pred.set_index(["metric", "form"]).prediction.loc["certified"], pred.set_index(["metric", "form"]).prediction.loc["clean"]
    assert (cert <= clean_ + 1e-12).all()
    assert scaling.decades(study, 1e18) == pytest.approx(2.5) and scaling.span(study) == pytest.approx(2.5)


def test_learning_curves_and_runs_in_progress(tmp_path):
    """Runs still training are shown where they stand (held-out history at the FLOPs spent so
    far), and only finished, certified runs enter the fit."""
    import json

    import pandas as pd
    import yaml

    def run(name, profile, width, epochs, done, finished):
        d = tmp_path / name
        d.mkdir()
        (d / "config.yaml").write_text(yaml.safe_dump(
            {"profile": profile, "rf": 7, "margin": 0.5, "head": "heaviside", "sigma": 0.0,
             "seed": 0, "width": width, "epochs": epochs, "method": "bagcert"}))
        (d / "metrics.json").write_text(json.dumps({"finished": finished}))
        (d / "provenance.json").write_text(json.dumps(
            {"wall_s": 7200.0, "epochs_done": done,
             "segments": [{"from_epoch": 0, "cpu_class": "avx512-bf16"},
                          {"from_epoch": 1, "cpu_class": "avx2-or-older"}]}))
        pd.DataFrame({"epoch": range(1, done + 1), "clean_accuracy": np.linspace(0.2, 0.5, done),
                      "certified_accuracy": np.linspace(0.0, 0.2, done),
                      "certified_global_accuracy": np.linspace(0.0, 0.1, done),
                      "epoch_s": [900.0] + [3600.0] * (done - 1)}).to_csv(d / "history.csv", index=False)

    run("scaling-w16-e4", "scaling", 16, 4, 4, True)
    run("scaling-w64-e48", "scaling", 64, 48, 3, False)
    run("smoke-other", "smoke", 8, 2, 2, True)              # not a profile of the study
    curves = scaling.learning_curves(tmp_path)
    assert sorted(curves.run.unique()) == ["scaling-w16-e4", "scaling-w64-e48"]
    live = curves[curves.run == "scaling-w64-e48"]
    planned = scaling.training_flops(64, 48)
    assert np.allclose(live.flops, planned * np.arange(1, 4) / 48) and not live.finished.any()
    now = scaling.runs_in_progress(tmp_path)
    assert now.run.tolist() == ["scaling-w64-e48"]
    r = now.iloc[0]
    assert (r.epochs_done, r.epochs, r.wall_h) == (3, 48, 2.0)
    assert np.isclose(r.planned_flops, planned) and np.isclose(r.certified, 0.2)
    # 45 epochs to go at the last 3 epochs' pace (900, 3600, 3600 s), on the latest segment's class
    assert np.isclose(r.to_go_h, 45 * 2700 / 3600) and r.pace_cpu_class == "avx2-or-older"
    assert r.cpu_class == "mixed: avx512-bf16, avx2-or-older"
    assert scaling.study_runs(tmp_path).empty          # nothing certified: no fit points
    from bagcert_lib.results import load_runs
    runs = load_runs(tmp_path).set_index("run")         # no count in provenance: from the config
    assert np.isclose(scaling.run_flops(runs).loc["scaling-w16-e4"], scaling.training_flops(16, 4))
    runs.loc["scaling-w16-e4", "training_flops"] = 123.0
    assert scaling.run_flops(runs).loc["scaling-w16-e4"] == 123.0


def test_a_run_resumed_on_other_machines_names_every_one():
    """The device a run trained on: provenance's own for one machine; for a run resumed on other
    CPUs (or thread counts), each distinct segment in order, not only the last one."""
    from bagcert_lib.config import REPO_ROOT
    from bagcert_lib.results import _json, trained_on

    one = {"device": "CPU: AMD EPYC (1 threads)",
           "segments": [{"device": "CPU: AMD EPYC (1 threads)", "cpu_class": "avx512-bf16"}] * 2}
    assert trained_on(one) == "CPU: AMD EPYC (1 threads)"
    assert trained_on({"device": "cuda: H200"}) == "cuda: H200"             # no segments recorded
    two = {"device": "CPU: Intel Xeon (2 threads)",
           "segments": [{"device": "CPU: AMD EPYC (1 threads)", "cpu_class": "avx2-or-older"},
                        {"device": "CPU: Intel Xeon (2 threads)", "cpu_class": "avx512-bf16"}]}
    assert trained_on(two) == ("CPU: AMD EPYC (1 threads, avx2-or-older) + "
                               "CPU: Intel Xeon (2 threads, avx512-bf16)")
    prov = _json(REPO_ROOT / "results" / "runs" / "scaling-w64-e48-rf7-m0.5-heaviside-s0-seed0" / "provenance.json")
    assert prov["device"] == "CPU: AMD EPYC (2 threads)"                      # the last segment only
    assert trained_on(prov) == ("CPU: AMD EPYC (1 threads, avx512-bf16; 1 threads, avx2-or-older; "
                                "2 threads, avx512-bf16)")
