"""Links in the built book (``book/_build/html``) that the published site could not serve.

A static host (GitHub Pages) serves files, and a folder only through its ``index.html``: it
lists no folder. So a link into the site fails when it names a folder without ``index.html``, a
file the build did not copy, or a path above the site's root (a project site lives at
``https://<owner>.github.io/<name>/``, so ``/x`` leaves it). Links to other sites are not
fetched. The checker runs over the built site when there is one (``make book``) and is tested
here on a small site built by hand.
"""
from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "book" / "_build" / "html"


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value and (name in ("href", "src") or (tag == "form" and name == "action")):
                self.links.append(value)


def links(page: Path) -> list[str]:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8", errors="replace"))
    return parser.links


def unservable(site: Path) -> list[str]:
    """Every ``page: link (why)`` of ``site`` that a static host could not serve. HTML files under
    ``_static/`` are the theme's templates, not pages, and are skipped."""
    site = site.resolve()
    problems = []
    for page in sorted(site.rglob("*.html")):
        if page.relative_to(site).parts[0] == "_static":
            continue
        for link in links(page):
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or not parts.path:   # another site, or an anchor
                continue
            where = f"{page.relative_to(site).as_posix()}: {link}"
            if parts.path.startswith("/"):
                problems.append(f"{where} (absolute path: leaves a project site)")
                continue
            target = (page.parent / unquote(parts.path)).resolve()
            if site != target and site not in target.parents:
                problems.append(f"{where} (outside the site)")
            elif target.is_dir():
                if not (target / "index.html").is_file():
                    problems.append(f"{where} (a folder without index.html: not listed)")
            elif not target.is_file():
                problems.append(f"{where} (no such file in the site)")
    return problems


def test_the_checker_finds_what_a_static_host_cannot_serve(tmp_path):
    site = tmp_path / "html"
    (site / "notebooks").mkdir(parents=True)
    (site / "results" / "runs" / "a").mkdir(parents=True)
    (site / "results" / "runs" / "a" / "metrics.json").write_text("{}")
    (site / "docs").mkdir()
    (site / "docs" / "index.html").write_text("<p>docs</p>")
    (site / "_static").mkdir()
    (site / "_static" / "macros.html").write_text('<link href="{{ pathto(x) }}">')   # a template
    (site / "index.html").write_text('<a href="notebooks/figure2.html#top">ok</a>')
    (site / "notebooks" / "figure2.html").write_text(
        '<a href="../results/runs/a/metrics.json">a file: ok</a>'
        '<a href="../docs/">a folder with index.html: ok</a>'
        '<a href="#section">an anchor: ok</a>'
        '<a href="https://github.com/x/y/tree/main/results/runs/a">another site: ok</a>'
        '<a href="mailto:a@b.c">mail: ok</a><img src="../_static/missing.png">'
        '<a href="../results/runs/a/">a folder</a>'
        '<a href="../results/runs/b/metrics.json">missing</a>'
        '<a href="../../outside.html">outside</a>'
        '<a href="/bagcert/index.html">absolute</a>'
        '<a href="../index.html?x=1">query: ok</a>')
    found = unservable(site)
    assert [p.split(": ", 1)[1] for p in found] == [
        "../_static/missing.png (no such file in the site)",
        "../results/runs/a/ (a folder without index.html: not listed)",
        "../results/runs/b/metrics.json (no such file in the site)",
        "../../outside.html (outside the site)",
        "/bagcert/index.html (absolute path: leaves a project site)",
    ]
    (site / "_static" / "missing.png").write_bytes(b"")
    assert len(unservable(site)) == 4


@pytest.mark.skipif(not (SITE / "index.html").is_file(), reason="no built book (make book)")
def test_every_link_into_the_built_site_is_served():
    problems = unservable(SITE)
    assert not problems, f"{len(problems)} links the published site cannot serve:\n" + "\n".join(problems[:40])


def test_the_repository_url_is_set_in_one_place():
    """book/_config.yml names the repository; the citation file agrees, and no other page of the
    book or module of the library spells it out (their links are derived from the config)."""
    url = yaml.safe_load((ROOT / "book" / "_config.yml").read_text())["repository"]["url"].rstrip("/")
    assert url.startswith("https://") and "<" not in url and "your" not in url.lower()
    assert yaml.safe_load((ROOT / "CITATION.cff").read_text())["repository-code"].rstrip("/") == url
    spelled = [p.relative_to(ROOT).as_posix()
               for folder in ("book", "notebooks", "bagcert_lib")
               for p in (ROOT / folder).rglob("*")
               if p.suffix in (".md", ".py", ".yml", ".ipynb") and "_build" not in p.parts
               and p.is_file() and url in p.read_text(errors="replace")]
    assert spelled == ["book/_config.yml"]


def test_run_folders_link_to_the_repository_view_of_the_folder(tmp_path):
    """A figure's run links open the repository's tree view of each run folder (a static site
    cannot list a folder), derived from book/_config.yml; a run outside the repository is named."""
    pytest.importorskip("IPython")
    import pandas as pd

    from bagcert_lib.results import repository, run_links

    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "_config.yml").write_text(
        "repository:\n  url: https://github.com/someone/fork/\n  branch: pages\n")
    assert repository(tmp_path) == ("https://github.com/someone/fork", "pages")
    url, branch = repository()
    run = ROOT / "results" / "runs" / "some-run"
    html = run_links(pd.DataFrame({"run": ["some-run", "elsewhere"],
                                   "path": [str(run), str(tmp_path / "elsewhere")]}), "x.ipynb").data
    assert f'href="{url}/tree/{branch}/results/runs/some-run"' in html
    assert f"<code>{tmp_path / 'elsewhere'}</code>" in html and html.count("href=") == 1
