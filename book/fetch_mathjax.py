"""Put MathJax 3 into the book's static files, so formulas render offline (no CDN).

    python book/fetch_mathjax.py            # before `jupyter-book build book/` (make book does it)

Takes ``es5/tex-svg.js`` (one self-contained file: TeX input, SVG output, no font files) from the
npm package ``mathjax@3.2.2`` (``npm pack``, cached in ``~/.cache/bagcert/npm`` or
``$BAGCERT_CACHE/npm``), checks its sha256 and copies it to ``book/_mathjax/mathjax/tex-svg.js``
(git-ignored), which the build copies to ``mathjax/tex-svg.js`` in the site (``html_extra_path``);
``book/_config.yml`` points Sphinx's ``mathjax_path`` there. Does nothing when the
file is already in place; exits non-zero with a one-line reason when it cannot be fetched.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

BOOK = Path(__file__).resolve().parent
VERSION = "3.2.2"
MEMBER = "package/es5/tex-svg.js"
SHA256 = "d4295dc33744836935c1399feece5159577b34c5c8ffb9f1c6324cd82e03a882"   # es5/tex-svg.js of 3.2.2
# Not in book/_static: Jupyter Book adds every .js file there to every page as a second, blocking
# <script>. html_extra_path copies book/_mathjax/ to the site's root, so the file is html/mathjax/.
TARGET = BOOK / "_mathjax" / "mathjax" / "tex-svg.js"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_dir() -> Path:
    return Path(os.environ.get("BAGCERT_CACHE") or Path.home() / ".cache" / "bagcert") / "npm"


def fetch(target: Path = TARGET) -> Path:
    """``target`` holding MathJax's tex-svg.js (fetched with npm into the cache if needed)."""
    if target.is_file() and _sha256(target) == SHA256:
        return target
    cache = cache_dir()
    tgz = cache / f"mathjax-{VERSION}.tgz"
    if not tgz.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm not found: install Node.js (npm) to fetch MathJax for the book, or put "
                               f"es5/tex-svg.js of mathjax@{VERSION} at {target}")
        cache.mkdir(parents=True, exist_ok=True)
        run = subprocess.run([npm, "pack", f"mathjax@{VERSION}", "--pack-destination", str(cache)],
                             capture_output=True, text=True, timeout=300)
        if run.returncode != 0 or not tgz.is_file():
            raise RuntimeError(f"npm pack mathjax@{VERSION} failed: {run.stderr.strip()[-500:]}")
    with tarfile.open(tgz) as tar:
        data = tar.extractfile(MEMBER).read()
    if hashlib.sha256(data).hexdigest() != SHA256:
        tgz.unlink()
        raise RuntimeError(f"{MEMBER} in {tgz} has an unexpected sha256 (removed; run again)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def main() -> int:
    try:
        print(fetch())
    except (RuntimeError, OSError, KeyError) as e:
        print(f"fetch_mathjax: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
