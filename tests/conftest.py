import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def colour_folder(tmp_path_factory):
    """A small image-folder dataset (train/test, 3 classes) that a tiny model can certify:
    each class is a colour channel, textured with noise."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, n in (("train", 96), ("test", 40)):
        for c in range(3):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                img = rng.uniform(0, 0.45, (32, 32, 3))
                img[..., c] += rng.uniform(0.35, 0.55)
                Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def committed_runs():
    """The committed run directories, results/runs. Not ``results_dir()``: under ``--nbval``,
    notebooks/conftest.py points BAGCERT_RESULTS at a temporary folder for the whole session."""
    from bagcert_lib.config import REPO_ROOT

    return REPO_ROOT / "results" / "runs"
