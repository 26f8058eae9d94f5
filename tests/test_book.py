"""The book builds with warnings as errors, every figure page shows a figure, and the rendered site
opens in headless Chromium (screenshots of the front page and a figure page)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
sys.path.insert(0, str(BOOK))
FIGURES = ["figure2", "figure3", "figure4", "figure5", "figure6", "figure7", "figure8", "headline",
           "scaling"]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("jupyter_book") is None,
                                reason="jupyter-book not installed (pip install -e '.[book]')")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    jb = Path(sys.executable).with_name("jupyter-book")
    # the book shows the committed results, whatever `pytest --nbval` points the notebooks at
    env = {k: v for k, v in os.environ.items() if k not in ("BAGCERT_RESULTS", "BAGCERT_PROFILE")}
    run = subprocess.run([str(jb), "build", str(BOOK), "-W", "--path-output", str(out)],
                         capture_output=True, text=True, timeout=1200, env=env)
    assert run.returncode == 0, f"jupyter-book build -W failed:\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    return out / "_build" / "html"


def test_every_page_is_built(site):
    pages = ["index", "intro", "method", "reproduce", "api", "bibliography",
             *[f"notebooks/{n}" for n in FIGURES + ["table1", "claims", "headline"]]]
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
    assert screenshots.main(["--html", str(site), "--out", str(tmp_path)]) == 0
    for name in screenshots.PAGES:
        png = tmp_path / f"{name}.png"
        assert png.stat().st_size > 20_000, f"{png} is suspiciously small"
