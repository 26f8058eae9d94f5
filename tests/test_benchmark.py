"""benchmarks/certification.py runs end to end at a tiny scale and writes every ratio it promises
(the numbers themselves are measured by running it, not asserted here)."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from bagcert_lib import data as data_mod
from bagcert_lib.config import REPO_ROOT, profile_config


def load_benchmark(script, tmp_path, monkeypatch):
    """A benchmarks/ script as a module, on fresh models (not the committed runs); skips
    without CIFAR-10."""
    try:
        data_mod.load_cifar10(progress=False)
    except data_mod.DataNotFoundError as e:
        pytest.skip(f"no CIFAR-10 here: {e}")
    monkeypatch.setenv("BAGCERT_RESULTS", str(tmp_path / "runs"))
    spec = importlib.util.spec_from_file_location(Path(script).stem, REPO_ROOT / "benchmarks" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_certification_benchmark_writes_every_ratio(tmp_path, monkeypatch):
    bench = load_benchmark("certification.py", tmp_path, monkeypatch)
    out = tmp_path / "bench.json"
    bench.main(["--n", "40", "--n-block", "1", "--n-wide", "1", "--rfs", "7", "--train-steps", "2",
                "--train-size", "192", "--out", str(out)])
    r = json.loads(out.read_text())
    assert set(r["ratios"]) == {"bagcert_rf7_certify_over_forward", "ds_block_over_bagcert_rf7_per_image",
                                "ds_column_over_bagcert_rf7_per_image", "summed_area_speedup_over_loop",
                                "bf16_over_fp32_training", "bare_fwd_bwd_over_trainer"}
    from bagcert_lib.runtime import cpu_supports_bf16
    bf16 = r["ratios"].pop("bf16_over_fp32_training")
    assert (bf16 > 0) if cpu_supports_bf16() else bf16 is None    # never emulated bf16
    assert all(v > 0 for v in r["ratios"].values())
    assert r["training"]["trainer_precision"] == ("bf16" if cpu_supports_bf16() else "fp32")
    assert r["cpu"]["model"] and "avx512_bf16" in r["cpu"] and r["cpu_class"]
    methods = [row["method"] for row in r["rows"]]
    assert methods == ["BagCert", "BagCert", "DS (column)", "DS (block)"]
    block = r["rows"][-1]
    assert block["forward_passes_per_image"] == 1024 and block["n"] == 1
    # no runs under this results folder: every model but the untrained width-768 one says fresh
    assert [row.get("weights", "")[:5] for row in r["rows"]] == ["fresh", "", "fresh", "fresh"]
    assert r["dataset"]["sha256"] and r["device"] and r["git"]["commit"]


def test_train_throughput_benchmark_compares_like_with_like(tmp_path):
    spec = importlib.util.spec_from_file_location("tp", REPO_ROOT / "benchmarks" / "train_throughput.py")
    tp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tp)
    out = tmp_path / "tp.json"
    tp.main(["--widths", "8", "--batch", "8", "--steps", "1", "--warmup", "1", "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["cpu"]["model"] and r["cpu_class"] and r["rows"]
    assert all(row["images_per_s"] > 0 for row in r["rows"])
    assert "w8 fp32: channels_last / contiguous" in r["ratios"]


def test_train_throughput_benchmark_times_torch_compile_against_eager(tmp_path):
    spec = importlib.util.spec_from_file_location("tp", REPO_ROOT / "benchmarks" / "train_throughput.py")
    tp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tp)
    out = tmp_path / "tp.json"
    tp.main(["--widths", "8", "--batch", "8", "--steps", "1", "--warmup", "1", "--formats", "contiguous",
             "--precisions", "fp32", "--modes", "eager", "compiled", "--out", str(out)])
    r = json.loads(out.read_text())
    assert [row["mode"] for row in r["rows"]] == ["eager", "compiled"]
    assert all(row["images_per_s"] > 0 for row in r["rows"])
    assert list(r["ratios"]) == ["w8 fp32 contiguous: compiled / eager"]


def test_certify_cost_benchmark_times_every_defense(tmp_path, monkeypatch):
    """benchmarks/certify_cost.py, tiny: a row per defense with its own certificate's 5×5
    accuracy; DS column and Mask-DS, two certificates of one model, share one timing."""
    cost = load_benchmark("certify_cost.py", tmp_path, monkeypatch)
    out = tmp_path / "cost.json"
    cost.main(["--n", "2", "--n-block", "1", "--n-cleanser", "1", "--out", str(out)])
    r = json.loads(out.read_text())
    rows = {x["defense"]: x for x in r["defenses"]}
    assert list(rows) == [d[0] for d in cost.DEFENSES] and not r["missing"]
    assert {x["condition"] for x in rows.values()} == {"3.2", "DS", "Mask-DS", "CBN", "Mask-BN", "PC"}
    assert rows["DS column"]["seconds_per_image"] == rows["Mask-DS"]["seconds_per_image"]
    assert rows["DS block"]["n"] == 1 and rows["PatchCleanser"]["n"] == 1 and rows["BagCert"]["n"] == 2
    assert all(x["weights"].startswith("fresh") and x["seconds_per_image"] > 0 for x in rows.values())
    assert r["cpu"]["model"] and r["git"]["commit"] and r["patch_shapes"]
    # the ResNet defenses' masked or ablated images a forward pass, as their certificates take it
    threads = torch.get_num_threads()
    assert {d: x["images_per_pass"] for d, x in rows.items()} == {
        "BagCert": None, "CBN": None, "Mask-BN": None, "DS block": 64 * threads, "DS column": 64 * threads,
        "Mask-DS": 64 * threads, "PatchCleanser": 64 * threads}


def test_certify_cost_times_the_second_budgets_models(tmp_path, monkeypatch):
    """``--budget 2``: the models of the equal-compute grid's second budget (BagCert and the
    other region scorers at width 64, the ResNet-18 defenses at width 32), named by the run
    each would load, in certify_cost-budget2.json unless told otherwise."""
    cost = load_benchmark("certify_cost.py", tmp_path, monkeypatch)
    names = {label: profile_config(p, **o).run_name() for label, p, o, _ in cost.defenses(2)}
    assert names == {"BagCert": "scaling-w64-e16-rf7-m0.5-heaviside-s0-seed0",
                     "DS block": "cpu-ds-block4-theta0.3-w32-e31-seed0",
                     "DS column": "cpu-ds-column4-theta0.3-w32-e31-seed0",
                     "Mask-DS": "cpu-ds-column4-theta0.3-w32-e31-seed0",
                     "CBN": "scaling-w64-e16-cbn-rf7-seed0",
                     "Mask-BN": "scaling-w64-e16-mask-bn-rf7-seed0",
                     "PatchCleanser": "cpu-patchcleanser-w32-e31-k6-seed0"}
    assert [profile_config(p, **o).run_name() for _, p, o, _ in cost.defenses(1)] == [
        profile_config(p, **o).run_name() for _, p, o, _ in cost.DEFENSES]
    out = tmp_path / "budget2.json"
    cost.main(["--budget", "2", "--defenses", "BagCert", "PatchCleanser", "--n", "1",
               "--n-cleanser", "1", "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["budget"] == 2 and r["flops"] == 1.3e15
    assert [(x["defense"], x["width"]) for x in r["defenses"]] == [("BagCert", 64), ("PatchCleanser", 32)]


def test_certify_cost_compares_compiled_certification_with_eager(tmp_path, monkeypatch):
    """``--defenses PatchCleanser --compile``: one row, timed eager and through torch.compile,
    with how far the compiled certification's accuracies lie from the eager ones."""
    cost = load_benchmark("certify_cost.py", tmp_path, monkeypatch)
    out = tmp_path / "compile.json"
    cost.main(["--defenses", "PatchCleanser", "--compile", "--n-cleanser", "2", "--out", str(out)])
    (row,) = json.loads(out.read_text())["defenses"]
    assert row["defense"] == "PatchCleanser" and row["rows"] == 24
    assert 0 <= row["compiled_rows_differing"] <= 24 and 0 <= row["compiled_max_accuracy_difference"] <= 1
    assert row["compiled_seconds_per_image"] > 0 and row["eager_over_compiled"] > 0


def test_forward_batch_benchmark_times_each_size_and_checks_the_logits(tmp_path, monkeypatch):
    """benchmarks/forward_batch.py, tiny: per many-pass model and budget, ms per image at each
    batch size, the fastest, the library's choice, and whether the logits changed with the size."""
    from bagcert_lib.runtime import forward_batch
    import torch

    bench = load_benchmark("forward_batch.py", tmp_path, monkeypatch)
    out = tmp_path / "fb.json"
    bench.main(["--budgets", "1", "--sizes", "2", "8", "--seconds", "0.01", "--out", str(out)])
    r = json.loads(out.read_text())
    assert [(m["model"], m["budget"], m["width"]) for m in r["models"]] == [("PatchCleanser", 1, 16), ("DS", 1, 16)]
    for m in r["models"]:
        assert list(m["sizes"]) == ["2", "8"] and m["fastest"] in (2, 8)
        assert all(v["ms_per_image"] > 0 and v["argmax_agrees"] in (True, False) for v in m["sizes"].values())
        assert m["sizes"]["8"]["max_abs_logit_difference"] == 0          # the reference itself
        assert m["library_batch"] == forward_batch(torch.zeros(1, 3, 32, 32)) and m["weights"].startswith("fresh")
    assert r["cpu"]["model"] and r["git"]["commit"] and r["threads"] >= 1
