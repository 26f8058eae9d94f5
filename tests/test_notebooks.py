"""Notebook hygiene: every notebook is paired with a jupytext percent script, in sync, committed
without outputs, and has one `parameters` cell for papermill."""
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"train.ipynb", "certify.ipynb", "attack.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_pair_in_sync_and_clean(path):
    script = path.with_suffix(".py")
    assert script.is_file(), f"{path.name} has no paired {script.name} (jupytext --set-formats ipynb,py:percent)"
    nb, py = jupytext.read(path), jupytext.read(script)
    strip = lambda n: [(c.cell_type, c.source.strip()) for c in n.cells]  # noqa: E731
    assert strip(nb) == strip(py), f"{path.name} and {script.name} differ: run `jupytext --sync {script}`"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} has outputs"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
