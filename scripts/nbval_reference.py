"""Store the reference outputs `pytest --nbval` compares: the cells marked ``# NBVAL_CHECK_OUTPUT``.

    python scripts/nbval_reference.py notebooks/figure5.ipynb notebooks/table1.ipynb

Executes each notebook (jupytext's .py pair is the source; an empty results folder, so nothing
run-dependent can leak in), then keeps the outputs of the marked cells only: every other cell stays
without outputs and unnumbered, which nbval skips. Run it after changing a marked cell.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

MARK = "# NBVAL_CHECK_OUTPUT"


def record(path: Path) -> int:
    nb = jupytext.read(path.with_suffix(".py"))
    with tempfile.TemporaryDirectory(prefix="bagcert-nbref-") as results:
        os.environ["BAGCERT_RESULTS"] = results
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    kept = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if MARK in cell.source:
            kept += 1
            for out in cell.outputs:
                out.pop("execution_count", None) if out.get("output_type") != "execute_result" else None
        else:
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)
    return kept


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"{arg}: {record(Path(arg))} reference cell(s)")
