"""Open the built book in headless Chromium and save screenshots of the front page and a figure page.

    python book/screenshots.py [--html book/_build/html] [--out book/_build/screenshots] [--pages notebooks/figure2 ...]

Needs Debian's ``chromium`` (``apt install chromium``) or ``$CHROMIUM``. Chromium starts with the
network-quiet flags this machine needs (no background networking, no component updates, a fresh
profile), loads each page from disk and writes a PNG per page. Exits non-zero if a page is missing,
Chromium fails, or a screenshot comes out blank.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BOOK = Path(__file__).resolve().parent
PAGES = {"front": "intro.html", "figure3": "notebooks/figure3.html"}   # index.html only redirects
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1400,1800",
         "--timeout=20000"]   # take the picture after 20 s even if a CDN script (MathJax) never loads


def chromium() -> str:
    for c in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if c and shutil.which(c):
            return shutil.which(c)
    raise FileNotFoundError("no Chromium found: install Debian's `chromium` or set $CHROMIUM")


def screenshot(page: Path, png: Path, timeout: float = 90) -> Path:
    """Render ``page`` (an HTML file) to ``png`` with headless Chromium."""
    if not page.is_file():
        raise FileNotFoundError(f"{page} does not exist: build the book first (make book)")
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="bagcert-chromium-") as profile:
        cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}", page.as_uri()]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"Chromium did not finish {page} within {timeout:.0f} s") from e
    if not png.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot of {page} (exit {run.returncode}):\n{run.stderr[-2000:]}")
    return png


def is_blank(png: Path) -> bool:
    """True when the image is a single colour (a page that did not render)."""
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    return float(img[..., :3].std()) < 1e-3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--html", type=Path, default=BOOK / "_build" / "html")
    p.add_argument("--out", type=Path, default=BOOK / "_build" / "screenshots")
    p.add_argument("--pages", nargs="+", metavar="PAGE",
                   help="pages to capture, e.g. notebooks/figure2 (default: the front page and Figure 3)")
    a = p.parse_args(argv)
    pages = {Path(x).name: f"{x}.html" for x in a.pages} if a.pages else PAGES
    for name, rel in pages.items():
        png = screenshot(a.html / rel, a.out / f"{name}.png")
        if is_blank(png):
            print(f"{png}: blank", file=sys.stderr)
            return 1
        print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
