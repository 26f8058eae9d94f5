"""Notebook hygiene: every notebook is paired with a jupytext percent script, in sync, committed
without outputs (except the reference outputs of cells marked ``# NBVAL_CHECK_OUTPUT``, which
`pytest --nbval` compares), and has one `parameters` cell for papermill."""
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")
MARK = "# NBVAL_CHECK_OUTPUT"
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
    raw = nbformat.read(path, as_version=4)
    for i, c in enumerate(c for c in raw.cells if c.cell_type == "code"):
        if MARK in c.source:   # a reference output nbval compares: it must be there
            assert c.outputs and c.execution_count, (
                f"{path.name} code cell {i} is marked {MARK} but stores no output: "
                f"python scripts/nbval_reference.py {path.relative_to(path.parent.parent)}")
        else:
            assert not c.outputs and c.execution_count is None, (
                f"{path.name} code cell {i} has outputs: commit notebooks without outputs")
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"


def test_some_outputs_are_compared():
    """nbval compares something real: at least the deterministic Figure 5 and Table 1 cells."""
    marked = [p.name for p in NOTEBOOKS if MARK in p.read_text()]
    assert {"figure5.ipynb", "table1.ipynb"} <= set(marked)
