"""The figure pages' helpers: committed patch labels are width × height, the paper's stated values
are there to draw, and "are the baselines dominated at our scale" follows from the numbers."""
import csv
import json

import pytest

from bagcert_lib.certifier import patch_label
from bagcert_lib.figures import baselines_at_our_scale, made_from, paper_values


def test_committed_labels_are_width_by_height(committed_runs):
    """Every certification.csv row and every previous.json row names its shape w × h (scripts/relabel_patches.py)."""
    files = sorted(committed_runs.glob("*/certification*.csv"))
    assert files
    for f in files:
        for row in csv.DictReader(f.open()):
            assert row["patch"] == patch_label((int(row["patch_h"]), int(row["patch_w"]))), (f, row["patch"])
    for f in sorted(committed_runs.glob("*/previous.json")):
        for row in json.loads(f.read_text()).get("certification", []):
            assert row["patch"] == f"{row['patch_w']}x{row['patch_h']}", (f, row)


def test_the_papers_values_for_each_figure():
    """Figure 2: 86 % clean / 60 % certified (3.2) and about 3 points less under 3.3; Figures 3 and
    4: the statements of §4, each with the sentence it comes from."""
    f2 = paper_values("figure2").set_index("condition")
    assert f2.loc["3.2", ["clean_accuracy", "certified_accuracy"]].tolist() == [0.86, 0.60]
    assert f2.loc["3.3", "certified_accuracy"] == pytest.approx(0.57)
    assert set(paper_values("figure3").patch) == {"5x5", "10x10"}
    f4 = paper_values("figure4")
    assert set(f4[f4.method == "DS column"].patch) == {"24x1", "12x2"}
    assert (f4[f4.method == "BagCert"].certified_accuracy == 0.40).all()
    for fig in ("figure2", "figure3", "figure4"):
        assert paper_values(fig).locator.str.contains("§4").all()


def _run(root, name, config, cert, flops):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text("".join(f"{k}: {v}\n" for k, v in config.items()))
    (d / "metrics.json").write_text(json.dumps({"finished": True}))
    (d / "provenance.json").write_text(json.dumps({"training_flops": flops, "n_train": 50000}))
    rows = ["patch,patch_h,patch_w,condition,n,clean_accuracy,certified_accuracy"]
    for (h, w), cond, acc in cert:
        rows.append(f"{patch_label((h, w))},{h},{w},{cond},1000,0.5,{acc}")
    (d / "certification.csv").write_text("\n".join(rows) + "\n")


def _results(tmp_path, column_5x5):
    bag = {"method": "bagcert", "rf": 7, "margin": 0.5, "head": "heaviside", "sigma": 0, "seed": 0,
           "profile": "cpu", "width": 32, "epochs": 6}
    ds = {"profile": "cpu", "width": 16, "epochs": 6, "ablation_size": 4, "theta": 0.3, "seed": 0}
    squares = [((k, k), c) for k, c in ((1, 0.3), (2, 0.2), (5, 0.13))]
    _run(tmp_path, "cpu-rf7", bag, [(p, cond, a) for p, a in squares for cond in ("3.2", "3.3")], 1.2e14)
    _run(tmp_path, "cpu-ds-block", {**ds, "method": "ds-block"},
         [((k, k), "DS", 0.07) for k in (1, 2, 5)], 6.4e13)
    _run(tmp_path, "cpu-ds-column", {**ds, "method": "ds-column"},
         [((1, 1), "DS", 0.4), ((2, 2), "DS", 0.1), ((5, 5), "DS", column_5x5), ((1, 24), "DS", 0.0)], 6.4e13)
    return tmp_path


def test_baselines_not_dominated_when_a_ds_run_certifies_more(tmp_path):
    d = baselines_at_our_scale(_results(tmp_path, 0.255))
    assert d["best"]["run"] == "cpu-rf7" and d["best"]["certified"] == 0.13 and d["best"]["flops"] == 1.2e14
    assert d["ds"]["block"]["certified"] == 0.07 and d["ds"]["column"]["certified"] == 0.255
    assert d["dominated"] is False
    assert d["column_above_to"] == 1            # above BagCert at 1×1, below at 2×2
    assert d["column_short_wide"] == {"24x1": 0.0}
    s = d["sentence"]
    assert s.startswith("At our scale (profile cpu) the baselines are not all dominated")
    for text in ("13.0 %", "7.0 %", "25.5 %", "1.2e14", "6.4e13", "0.0 % at 24×1", "up to 1×1"):
        assert text in s, text


def test_baselines_dominated_when_bagcert_certifies_most(tmp_path):
    d = baselines_at_our_scale(_results(tmp_path, 0.10))
    assert d["dominated"] is True
    assert d["sentence"].startswith("At our scale (profile cpu) the baselines are dominated")
    assert "less than" not in d["sentence"]


def test_made_from_names_profile_width_epochs_and_flops(tmp_path):
    from bagcert_lib.results import load_runs

    line = made_from(load_runs(_results(tmp_path, 0.2)))
    assert "1 BagCert run of profile cpu (width 32, 6 epochs, 1.2e14 training FLOPs)" in line
    assert "DS column (ResNet-18) run of profile cpu (width 16, 6 epochs, 6.4e13 training FLOPs)" in line


def test_one_run_per_baseline_method_at_bagcerts_compute():
    """Two DS column runs of one profile: the one trained at BagCert's FLOPs is the one compared;
    without BagCert runs, the larger budget; every BagCert run stays."""
    import pandas as pd

    from bagcert_lib.results import one_per_method

    runs = pd.DataFrame([
        {"run": "b", "method": "bagcert", "rf": 7, "margin": 0.5, "training_flops": 1.2e14},
        {"run": "b9", "method": "bagcert", "rf": 9, "margin": 0.5, "training_flops": 1.5e14},
        {"run": "col-half", "method": "ds-column", "rf": 7, "margin": 0.5, "training_flops": 6.4e13},
        {"run": "col-equal", "method": "ds-column", "rf": 7, "margin": 0.5, "training_flops": 1.28e14},
        {"run": "blk", "method": "ds-block", "rf": 7, "margin": 0.5, "training_flops": 6.4e13},
    ])
    assert sorted(one_per_method(runs).run) == ["b", "b9", "blk", "col-equal"]
    no_bagcert = runs[runs.method != "bagcert"].assign(training_flops=[6.4e13, 1.0e15, 6.4e13])
    assert sorted(one_per_method(no_bagcert).run) == ["blk", "col-equal"]


def test_scale_label_names_each_defenses_architecture():
    import pandas as pd

    from bagcert_lib.results import scale_label

    runs = pd.DataFrame([dict(method="bagcert", profile="cpu", width=32, epochs=6, n_train=50000),
                         dict(method="mask-bn", profile="cpu", width=32, epochs=6, n_train=50000),
                         dict(method="ds-column", profile="cpu", width=16, epochs=12, n_train=50000)])
    label = scale_label(runs)
    assert "profile cpu: width 32, 6 epochs" in label
    assert "mask-bn region scorer width 32" in label and "ds-column ResNet-18 width 16, 12 epochs" in label


def test_headline_runs_leave_out_smoke_runs_unless_there_are_no_others():
    """The headline page and the provenance appendix list the same runs: the finished, certified
    RF 7, M 0.5 runs, smoke runs only when no other profile has one."""
    import pandas as pd

    from bagcert_lib.results import headline_runs

    base = {"method": "bagcert", "rf": 7, "margin": 0.5, "head": "heaviside", "seed": 0, "sigma": 0.0,
            "finished": True, "certified": True}
    runs = pd.DataFrame([
        {**base, "run": "cpu", "profile": "cpu"},
        {**base, "run": "smoke", "profile": "smoke"},
        {**base, "run": "rf9", "profile": "cpu", "rf": 9},
        {**base, "run": "training", "profile": "cpu_long", "finished": False},
        {**base, "run": "uncertified", "profile": "scaling", "certified": False},
    ])
    assert list(headline_runs(runs).run) == ["cpu"]
    assert list(headline_runs(runs[runs.profile == "smoke"]).run) == ["smoke"]
    assert headline_runs(runs.iloc[:0]).empty
