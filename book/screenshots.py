"""Open the built book in headless Chromium and save screenshots of the front page and a figure page.

    python book/screenshots.py [--html book/_build/html] [--out book/_build/screenshots] [--pages notebooks/figure2 ...]
                               [--layout notebooks/figure2 ...]

Needs Debian's ``chromium`` (``apt install chromium``) or ``$CHROMIUM``. Chromium starts with the
network-quiet flags this machine needs (no background networking, no component updates, a fresh
profile), loads each page from disk and writes a PNG per page, then checks that the formulas of
``method.html`` (``--math``) were typeset by MathJax (served from the site itself, no network),
and that every figure page reads at 1280 px (``--layout``): each figure spans the content column
and no table is wider than it. Exits non-zero if a page is missing, Chromium fails, a screenshot
comes out blank, a page shows raw TeX, a figure is narrower than the column or a table overflows it.
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
#: Pages whose figures must span the content column and whose tables must fit it (``--layout``):
#: every page with a notebook's figures or tables, and the prose pages that paste them.
LAYOUT_PAGES = [f"notebooks/{n}.html" for n in ("figure2", "figure3", "figure4", "figure5", "figure6", "figure7",
                                                "figure8", "table1", "headline", "scaling", "claims",
                                                "provenance", "certify_images", "defenses")] + [
    "intro.html", "reproduce.html", "benchmarks.html"]
#: The reader's window: a 1280-px wide screen.
WIDTH = 1280
#: Pages whose formulas must render (MathJax from the site's own _static, no network).
MATH_PAGES = ["method.html"]
#: TeX delimiters that stay visible when MathJax did not run.
RAW_TEX = ("\\(", "\\)", "\\[", "\\]", "$$")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", f"--window-size={WIDTH},1800",
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
        cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}", page.resolve().as_uri()]
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
               "--virtual-time-budget=10000", page.resolve().as_uri()]
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


#: Measures a page once it has loaded: the width of the article's content column, each figure of
#: a notebook output (its natural and displayed width) and each table's width. The result goes into
#: a <pre id="bagcert-layout"> that ``--dump-dom`` returns.
LAYOUT_JS = """<script>
window.addEventListener('load', function () { setTimeout(function () {
  var art = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  var cs = getComputedStyle(art);
  var out = {column: art.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight),
             images: [], tables: []};
  art.querySelectorAll('.cell_output img, .output img').forEach(function (img) {
    if (img.offsetParent === null) return;            // folded away: nothing to read
    out.images.push({src: img.getAttribute('src'), natural: img.naturalWidth,
                     shown: img.getBoundingClientRect().width});
  });
  art.querySelectorAll('table').forEach(function (t) {
    if (t.offsetParent === null) return;
    var head = (t.innerText || '').replace(/\\s+/g, ' ').slice(0, 60);
    out.tables.push({head: head, width: Math.max(t.scrollWidth, t.getBoundingClientRect().width)});
  });
  var pre = document.createElement('pre');
  pre.id = 'bagcert-layout';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 300); });
</script>"""


def measure_layout(page: Path, timeout: float = 90) -> dict:
    """What :data:`LAYOUT_JS` measures on ``page`` at :data:`WIDTH` px: a copy of the page with the
    script appended (beside it, so its relative links resolve) is rendered by headless Chromium."""
    import json
    import re

    if not page.is_file():
        raise FileNotFoundError(f"{page} does not exist: build the book first (make book)")
    probe = page.with_name(f".layout-{page.name}")
    html = page.read_text()
    probe.write_text(html.replace("</body>", LAYOUT_JS + "</body>") if "</body>" in html else html + LAYOUT_JS)
    try:
        dom = dump_dom(probe, timeout)
    finally:
        probe.unlink(missing_ok=True)
    m = re.search(r'<pre id="bagcert-layout"[^>]*>(.*?)</pre>', dom, flags=re.S)
    if not m:
        raise RuntimeError(f"{page}: the layout probe did not run")
    from html import unescape

    return json.loads(unescape(m.group(1)))


def layout_problems(layout: dict, slack: float = 2.0) -> list[str]:
    """Why a page does not read at :data:`WIDTH` px: a figure shown narrower than the content
    column (its text then comes out smaller than the body's, or it leaves the column half empty), or
    a table wider than the column (the reader must scroll sideways)."""
    column = layout["column"]
    problems = []
    for img in layout["images"]:
        if img["shown"] < column - slack:
            problems.append(f"figure {img['src']} is shown {img['shown']:.0f} px wide (natural width "
                            f"{img['natural']} px), narrower than the content column ({column:.0f} px)")
    for t in layout["tables"]:
        if t["width"] > column + slack:
            problems.append(f"table {t['head']!r}... is {t['width']:.0f} px wide, wider than the content "
                            f"column ({column:.0f} px)")
    return problems


def check_layout(page: Path) -> list[str]:
    """:func:`layout_problems` of ``page`` rendered in headless Chromium."""
    return layout_problems(measure_layout(page))


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
    p.add_argument("--layout", nargs="*", metavar="PAGE",
                   help="pages whose figures must span the content column and whose tables must fit it, "
                        "e.g. notebooks/figure2 (default: every figure page)")
    a = p.parse_args(argv)
    pages = {Path(x).name: f"{x}.html" for x in a.pages} if a.pages else PAGES
    for name, rel in pages.items():
        png = screenshot(a.html / rel, a.out / f"{name}.png")
        if is_blank(png):
            print(f"{png}: blank", file=sys.stderr)
            return 1
        print(png)
    failed = False
    checks = [(a.math, MATH_PAGES, check_math, "formulas rendered by MathJax"),
              (a.layout, LAYOUT_PAGES, check_layout,
               f"every figure spans the content column, every table fits it ({WIDTH} px window)")]
    for asked, default, check, ok in checks:
        for rel in [f"{x}.html" for x in asked] if asked is not None else default:
            problems = check(a.html / rel)
            for problem in problems:
                print(f"{rel}: {problem}", file=sys.stderr)
            failed |= bool(problems)
            if not problems:
                print(f"{rel}: {ok}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
