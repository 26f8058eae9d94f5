"""`pytest --nbval`: run every notebook at smoke scale, writing results to a temporary folder.

BAGCERT_PROFILE=smoke makes the notebooks' `profile="auto"` resolve to the smoke profile and
BAGCERT_RESULTS points every run directory into a temporary folder, so committed results are never
touched. Notebooks run in pipeline order: train, then certify and attack, then the figures.
"""
import os
import shutil
import tempfile

ORDER = ["train.ipynb", "certify.ipynb", "attack.ipynb"]  # then the figures, alphabetically


def pytest_configure(config):
    if getattr(config.option, "nbval", False) or getattr(config.option, "nbval_lax", False):
        os.environ.setdefault("BAGCERT_PROFILE", "smoke")
        tmp = tempfile.mkdtemp(prefix="bagcert-nbval-")
        os.environ["BAGCERT_RESULTS"] = tmp
        config.add_cleanup(lambda: shutil.rmtree(tmp, ignore_errors=True))


def pytest_collection_modifyitems(items):
    def rank(item):
        name = os.path.basename(str(item.fspath))
        return ORDER.index(name) if name in ORDER else len(ORDER)
    items.sort(key=rank)  # stable: cells keep their order within a notebook
