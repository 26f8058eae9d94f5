"""Write every patch label of the committed results in the paper's notation, width × height.

    python scripts/relabel_patches.py [results/runs]

A patch label is ``f"{w}x{h}"`` (``certifier.patch_label``: the paper's short-but-wide patch is
"24x1", 24 pixels wide and 1 high). Results written before that convention labelled shapes height
first ("1x24" for the same patch). This script rewrites

* the ``patch`` column of every ``certification*.csv`` from its ``patch_h`` / ``patch_w`` columns
  (only that column changes: every other field keeps its text);
* the ``certification`` rows of every ``previous.json`` (a retrained run's old numbers): rows that
  carry ``patch_h`` / ``patch_w`` are relabelled from them; rows without (written height first)
  get them from their old label, then the new label.

Both rewrites derive the label from (h, w), so running the script again changes nothing.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bagcert_lib.certifier import patch_label  # noqa: E402


def relabel_csv(path: Path) -> bool:
    """Rewrite ``path``'s patch column from patch_h / patch_w; True if the file changed."""
    text = path.read_text()
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows or not {"patch", "patch_h", "patch_w"} <= set(rows[0]):
        return False
    i, ih, iw = (rows[0].index(c) for c in ("patch", "patch_h", "patch_w"))
    for r in rows[1:]:
        if r:
            r[i] = patch_label((int(r[ih]), int(r[iw])))
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\n").writerows(rows)
    if out.getvalue() == text:
        return False
    path.write_text(out.getvalue())
    return True


def relabel_previous(path: Path) -> bool:
    """Give every certification row of a previous.json its (h, w) and a width × height label."""
    text = path.read_text()
    old = json.loads(text)
    for row in old.get("certification", []):
        if "patch_h" not in row:                      # written height first: "1x24" = 1 high, 24 wide
            h, w = (int(x) for x in row["patch"].split("x"))
            row["patch_h"], row["patch_w"] = str(h), str(w)
        row["patch"] = patch_label((int(row["patch_h"]), int(row["patch_w"])))
    new = json.dumps(old, indent=2) + ("\n" if text.endswith("\n") else "")
    if new == text:
        return False
    path.write_text(new)
    return True


def main(argv=None) -> int:
    root = Path((argv or sys.argv[1:] or [ROOT / "results" / "runs"])[0])
    changed = [p for p in sorted(root.glob("*/certification*.csv")) if relabel_csv(p)]
    changed += [p for p in sorted(root.glob("*/previous.json")) if relabel_previous(p)]
    for p in changed:
        print(p.relative_to(root))
    print(f"{len(changed)} files relabelled width x height under {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
