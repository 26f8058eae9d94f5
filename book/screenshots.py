"""Open the built book in headless Chromium and save screenshots of the front page and a figure page.

    python book/screenshots.py [--html book/_build/html] [--out book/_build/screenshots] [--pages notebooks/figure2 ...]

Needs Debian's ``chromium`` (``apt install chromium``) or ``$CHROMIUM``. Chromium starts with the
network-quiet flags this machine needs (no background networking, no component updates, a fresh
profile), loads each page from disk and writes a PNG per page, then checks that the formulas of
``method.html`` (``--math``) were typeset by MathJax (served from the site itself, no network).
Exits non-zero if a page is missing, Chromium fails, a screenshot comes out blank, or a page shows
raw TeX.
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
#: Pages whose formulas must render (MathJax from the site's own _static, no network).
MATH_PAGES = ["method.html"]
#: TeX delimiters that stay visible when MathJax did not run.
RAW_TEX = ("\\(", "\\)", "\\[", "\\]", "$$")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1400,1800",
         "--timeout=20000"]   # take the picture after 20 s at the latest


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


def dump_dom(page: Path, timeout: float = 90) -> str:
    """The DOM of ``page`` after its scripts ran (``--dump-dom``, 10 s of virtual time)."""
    if not page.is_file():
        raise FileNotFoundError(f"{page} does not exist: build the book first (make book)")
    with tempfile.TemporaryDirectory(prefix="bagcert-chromium-") as profile:
        cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", "--dump-dom",
               "--virtual-time-budget=10000", page.as_uri()]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"Chromium did not finish {page} within {timeout:.0f} s") from e
    if not run.stdout.strip():
        raise RuntimeError(f"Chromium dumped no DOM for {page} (exit {run.returncode}):\n{run.stderr[-2000:]}")
    return run.stdout


def math_problems(dom: str) -> list[str]:
    """Why the formulas of a rendered page do not show as math: no ``mjx-container`` (MathJax did
    not run), or TeX delimiters left in the visible text (outside scripts, styles and math)."""
    from html.parser import HTMLParser

    class Text(HTMLParser):
        SKIP = {"script", "style", "mjx-container", "noscript", "title"}

        def __init__(self):
            super().__init__()
            self.depth, self.parts, self.containers = 0, [], 0

        def handle_starttag(self, tag, attrs):
            if tag == "mjx-container":
                self.containers += 1
            if tag in self.SKIP:
                self.depth += 1

        def handle_endtag(self, tag):
            if tag in self.SKIP and self.depth:
                self.depth -= 1

        def handle_data(self, data):
            if not self.depth:
                self.parts.append(data)

    p = Text()
    p.feed(dom)
    text = " ".join(p.parts)
    problems = [] if p.containers else ["no <mjx-container>: MathJax did not typeset the page"]
    for d in RAW_TEX:
        if d in text:
            i = text.index(d)
            problems.append(f"raw TeX {d!r} in the visible text: ...{text[max(0, i - 60):i + 60]!r}...")
    return problems


def check_math(page: Path) -> list[str]:
    """:func:`math_problems` of ``page`` rendered in headless Chromium."""
    return math_problems(dump_dom(page))


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
    p.add_argument("--math", nargs="*", metavar="PAGE",
                   help="pages whose formulas must render, e.g. method (default: method.html); "
                        "fails when MathJax did not run or raw TeX is visible")
    a = p.parse_args(argv)
    pages = {Path(x).name: f"{x}.html" for x in a.pages} if a.pages else PAGES
    for name, rel in pages.items():
        png = screenshot(a.html / rel, a.out / f"{name}.png")
        if is_blank(png):
            print(f"{png}: blank", file=sys.stderr)
            return 1
        print(png)
    failed = False
    for rel in [f"{x}.html" for x in a.math] if a.math is not None else MATH_PAGES:
        problems = check_math(a.html / rel)
        for problem in problems:
            print(f"{rel}: {problem}", file=sys.stderr)
        failed |= bool(problems)
        if not problems:
            print(f"{rel}: formulas rendered by MathJax")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
