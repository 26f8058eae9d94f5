"""The book builds with warnings as errors, every figure page shows a figure, every page loads MathJax
from the site itself, and the rendered site opens in headless Chromium (screenshots of the front
page and a figure page; the formulas of the method page typeset, no raw TeX; at 1280 px every
figure spans the content column and no table is wider than it)."""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
sys.path.insert(0, str(BOOK))
FIGURES = ["figure2", "figure3", "figure4", "figure5", "figure6", "figure7", "figure8", "headline",
           "scaling", "defenses"]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("jupyter_book") is None,
                                reason="jupyter-book not installed (pip install -e '.[book]')")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    jb = Path(sys.executable).with_name("jupyter-book")
    # the book shows the committed results, whatever `pytest --nbval` points the notebooks at
    env = {k: v for k, v in os.environ.items() if k not in ("BAGCERT_RESULTS", "BAGCERT_PROFILE")}
    # MathJax from its npm package into book/_static, as `make book` does (formulas render offline)
    import fetch_mathjax
    try:
        fetch_mathjax.fetch()
    except RuntimeError as e:
        pytest.fail(f"could not put MathJax into the site: {e}")
    run = subprocess.run([str(jb), "build", str(BOOK), "-W", "--path-output", str(out)],
                         capture_output=True, text=True, timeout=1200, env=env)
    assert run.returncode == 0, f"jupyter-book build -W failed:\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    return out / "_build" / "html"


def test_every_page_is_built(site):
    pages = ["index", "intro", "method", "reproduce", "api", "bibliography",
             *[f"notebooks/{n}" for n in FIGURES + ["table1", "claims", "headline", "certify_images",
                                                    "provenance"]]]
    missing = [p for p in pages if not (site / f"{p}.html").is_file()]
    assert not missing, f"pages not built: {missing}"


@pytest.mark.parametrize("name", FIGURES)
def test_figure_pages_show_a_figure(site, name):
    html = (site / "notebooks" / f"{name}.html").read_text()
    assert "<img" in html and ".png" in html, f"{name}: no figure on the page"
    assert "Traceback" not in html


def test_prose_numbers_are_glued(site):
    html = (site / "intro.html").read_text()
    assert html.count('class="pasted-text"') >= 6, "the headline table lost its glued numbers"


def test_site_renders_in_chromium(site, tmp_path):
    import screenshots
    try:
        screenshots.chromium()
    except FileNotFoundError:
        pytest.skip("no Chromium (Debian: apt install chromium)")
    assert screenshots.main(["--html", str(site), "--out", str(tmp_path), "--layout"]) == 0
    for name in screenshots.PAGES:
        png = tmp_path / f"{name}.png"
        assert png.stat().st_size > 20_000, f"{png} is suspiciously small"


def test_mathjax_is_served_by_the_site(site):
    """Every page with formulas loads MathJax from the site itself (no CDN), at a path that exists."""
    pages = sorted(site.rglob("*.html"))
    pages = [p for p in pages if "_static" not in p.parts and "results" not in p.parts]
    assert len(pages) > 10
    checked = []
    for page in pages:
        html = page.read_text()
        if 'class="math' not in html:    # Sphinx loads MathJax only on pages with formulas
            continue
        checked.append(page)
        srcs = re.findall(r'<script[^>]+src="([^"]*(?:tex-svg|mathjax)[^"]*)"', html, flags=re.I)
        assert srcs, f"{page.relative_to(site)}: no MathJax script"
        for src in srcs:
            assert "://" not in src, f"{page.relative_to(site)} loads MathJax from the network: {src}"
            assert (page.parent / src.split("?")[0]).resolve().is_file(), (
                f"{page.relative_to(site)}: MathJax path {src} does not resolve")
    assert any(p.name == "method.html" for p in checked), "method.html has no formulas any more"


def test_certify_images_page(site):
    """The page builds from the committed results: certificates, or a clear note without a model."""
    html = (site / "notebooks" / "certify_images.html").read_text()
    assert "Traceback" not in html
    assert ("<img" in html and ".png" in html) or "No shipped model yet" in html


def test_math_renders_in_chromium(site):
    """method.html typesets its formulas offline: MathJax ran, no TeX delimiters left visible."""
    import screenshots
    try:
        screenshots.chromium()
    except FileNotFoundError:
        pytest.skip("no Chromium (Debian: apt install chromium)")
    for page in screenshots.MATH_PAGES:
        problems = screenshots.check_math(site / page)
        assert not problems, f"{page}: " + "; ".join(problems)


def test_raw_tex_is_detected():
    """The check itself: a page whose MathJax did not run fails it."""
    import screenshots
    raw = "<html><body><p>An image <span class=\"math\">\\(x \\in [0,1]\\)</span></p></body></html>"
    assert screenshots.math_problems(raw)
    ok = "<html><body><p>An image <mjx-container><svg></svg></mjx-container></p><script>a = '\\(';</script></body></html>"
    assert screenshots.math_problems(ok) == []


def _chromium_or_skip():
    import screenshots
    try:
        screenshots.chromium()
    except FileNotFoundError:
        pytest.skip("no Chromium (Debian: apt install chromium)")
    return screenshots


@pytest.mark.parametrize("page", [p.removesuffix(".html") for p in
                                  __import__("screenshots").LAYOUT_PAGES])
def test_page_reads_at_1280_px(site, page):
    """At 1280 px every figure of the page spans the content column (so its text is not shrunk
    below the body's) and no table is wider than the column."""
    screenshots = _chromium_or_skip()
    problems = screenshots.check_layout(site / f"{page}.html")
    assert not problems, f"{page}: " + "; ".join(problems)


def test_layout_check_fails_on_a_narrow_figure_and_a_wide_table(tmp_path):
    """The check itself, in Chromium on a constructed page: a 300-px figure in a 700-px column and a
    table of 30 wide cells fail it; a 1,000-px figure and a small table pass."""
    screenshots = _chromium_or_skip()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, inches in (("narrow", 3), ("wide", 10)):
        fig = plt.figure(figsize=(inches, 2), dpi=100)
        fig.text(0.5, 0.5, name)
        fig.savefig(tmp_path / f"{name}.png")
        plt.close(fig)

    def page(img, cells):
        row = "".join(f"<td>cell_{i:02d}_xxxxxxxx</td>" for i in range(cells))
        return (f'<html><body><article class="bd-article" style="width:700px;padding:0 20px">'
                f'<div class="cell_output"><img src="{img}.png" style="max-width:100%"></div>'
                f"<table><tr>{row}</tr></table></article></body></html>")

    (tmp_path / "bad.html").write_text(page("narrow", 30))
    (tmp_path / "good.html").write_text(page("wide", 3))
    bad = screenshots.check_layout(tmp_path / "bad.html")
    assert any("narrower than the content column (700 px)" in p for p in bad), bad
    assert any(p.startswith("table") for p in bad), bad
    assert screenshots.check_layout(tmp_path / "good.html") == []
