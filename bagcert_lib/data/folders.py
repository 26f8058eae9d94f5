"""Image folders ``<root>/{train,val|test}/<class>/*`` decoded into memory at one size
(small sets only; ImageNet streams instead: :mod:`.imagenet`), and a folder of one's own
pictures to certify (:func:`load_own_images`). Every image becomes 8-bit RGB the same way
(:func:`to_rgb`)."""
from __future__ import annotations

import io
import pathlib
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .cache import _cached_load, _manifest_sha256
from .core import IMAGE_EXTENSIONS, DataCorruptError, DataNotFoundError, ImageData

#: What transparent pixels show: the image is composited on white, as a viewer displays it.
BACKGROUND = (255, 255, 255)

#: What a file that cannot be decoded raises in PIL (truncated, not an image, too large).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB whatever its mode: 16- and 32-bit integer grayscale scaled to
    0…255 by its bit depth (65535 → 255, not clipped to white); float grayscale from [0, 1]
    (or 0…255); palette images through their palette; CMYK through its ICC profile when it has
    one, else PIL's conversion; any alpha channel or transparent palette entry composited on
    white (:data:`BACKGROUND`)."""
    if img.mode.startswith("I") or img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        top = a.max(initial=0)
        if img.mode.startswith("I;16") or (img.mode == "I" and 255 < top <= 65535):
            scale = 65535.0
        elif img.mode == "I" and top > 65535:
            scale = 2.0 ** 32 - 1
        elif img.mode == "F" and top <= 1:
            scale = 1.0
        else:
            scale = 255.0
        img = Image.fromarray(np.clip(np.round(a / scale * 255), 0, 255).astype(np.uint8), "L")
    if img.mode == "CMYK" and img.info.get("icc_profile"):
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
            img = ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:        # a broken profile: PIL's plain conversion below
            pass
    if (img.mode in ("P", "L", "RGB") and "transparency" in img.info) or img.mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        background = Image.new("RGBA", img.size, (*BACKGROUND, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("RGB")


class OwnImages(NamedTuple):
    """Pictures from a folder, ready to certify: ``x`` uint8 (N, 3, H, W), ``labels`` (N,) with
    -1 where a picture has no class, ``names`` (paths relative to the folder), and ``skipped``:
    (name, why) of every file that could not be decoded."""
    x: torch.Tensor
    labels: torch.Tensor
    names: list
    skipped: list


def load_own_images(folder, size=(32, 32), classes=()) -> OwnImages:
    """Every image file under ``folder`` (any size, mode and depth: :func:`to_rgb`), scaled and
    centre-cropped to ``size`` (h, w). A picture inside a sub-folder named after one of
    ``classes`` is labelled with it, any other gets -1. A file that cannot be decoded (e.g. a
    truncated JPEG) is skipped and named in ``skipped`` with the reason; the others are kept."""
    folder = pathlib.Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder} (give a folder of images)")
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {folder}")
    classes = list(classes)
    xs, ys, names, skipped = [], [], [], []
    for f in files:
        name = f.relative_to(folder).as_posix()
        try:
            with Image.open(f) as img:
                img.load()
                rgb = _resize_center_crop(to_rgb(img), _parse_size(size))
        except DECODE_ERRORS as err:
            skipped.append((name, " ".join(str(err).split()) or type(err).__name__))
            continue
        xs.append(torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1))
        ys.append(classes.index(f.parent.name) if f.parent.name in classes else -1)
        names.append(name)
    h, w = _parse_size(size)
    x = torch.stack(xs) if xs else torch.empty((0, 3, h, w), dtype=torch.uint8)
    return OwnImages(x, torch.tensor(ys, dtype=torch.int64), names, skipped)


def _decode_images(blobs: list[bytes], names: list[str], progress: bool, desc: str, size=None) -> np.ndarray:
    """Decode image bytes to a uint8 (N, 3, H, W) array (optionally resized + center-cropped)."""
    out = None
    for i, blob in enumerate(tqdm(blobs, desc=desc, unit="img", disable=not progress)):
        try:
            with Image.open(io.BytesIO(blob)) as img:
                img = to_rgb(img)
                if size is not None:
                    img = _resize_center_crop(img, size)
                arr = np.asarray(img).transpose(2, 0, 1)  # HWC -> CHW
        except Exception as err:
            raise DataCorruptError(f"cannot decode image {names[i]}: {err}") from err
        if out is None:
            out = np.empty((len(blobs), *arr.shape), dtype=np.uint8)
        if arr.shape != out.shape[1:]:
            raise ValueError(
                f"image {names[i]} has size {arr.shape[1]}x{arr.shape[2]} (HxW) but earlier images are "
                f"{out.shape[2]}x{out.shape[3]}; pass size=(h, w) or size=int to resize and center-crop"
            )
        out[i] = arr
    return out



def _parse_size(size):
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def _resize_center_crop(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale (bilinear, aspect kept) so the image just covers (h, w), then center-crop."""
    h, w = size
    scale = max(h / img.height, w / img.width)
    new_w, new_h = max(w, round(img.width * scale)), max(h, round(img.height * scale))
    resample = getattr(Image, "Resampling", Image).BILINEAR
    img = img.resize((new_w, new_h), resample)
    left, top = (new_w - w) // 2, (new_h - h) // 2
    return img.crop((left, top, left + w, top + h))


def _list_images(split_dir: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """class folder name -> sorted image files in it."""
    out = {}
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out[class_dir.name] = sorted(
            p for p in class_dir.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
    return out


def load_image_folder(root, *, size=None, cache_dir=None, progress=True) -> ImageData:
    """Load ``<root>/<split>/<class>/*`` (ImageNet-style) as an :class:`ImageData`.

    Splits: 'train', and 'val' if present else 'test'. Classes are the sorted subfolder
    names of the train split. ``size=(h, w)`` (or an int for a square): each image is
    scaled (bilinear, aspect ratio kept) so that it just covers (h, w) -- for a square size,
    its shorter side becomes the size -- and then center-cropped. Without ``size`` all
    images must already have the same size, else ValueError.
    """
    root = pathlib.Path(root).expanduser().resolve()
    size = _parse_size(size)
    train_dir = root / "train"
    test_dir = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataNotFoundError(
            f"image folder needs {train_dir} and {root / 'val'} or {root / 'test'} "
            f"(layout <root>/<split>/<class>/<image>); looked in {root}"
        )
    train = _list_images(train_dir)
    test = _list_images(test_dir)
    classes = sorted(train)
    unknown = sorted(set(test) - set(classes))
    if not classes:
        raise DataNotFoundError(f"no class folders in {train_dir}")
    if unknown:
        raise ValueError(f"classes {unknown} in {test_dir} do not exist in {train_dir}")

    all_files = [f for split in (train, test) for files in split.values() for f in files]
    sha = _manifest_sha256(root, all_files)
    variant = "" if size is None else f"-{size[0]}x{size[1]}"

    def decode():
        arrays = []
        for split, split_dir in ((train, train_dir), (test, test_dir)):
            files = [f for c in classes for f in split.get(c, [])]
            if not files:
                raise DataNotFoundError(f"no images in {split_dir}")
            labels = [i for i, c in enumerate(classes) for _ in split.get(c, [])]
            names = [str(f) for f in files]
            x = _decode_images([f.read_bytes() for f in files], names, progress, f"decode {split_dir.name}", size)
            arrays += [x, np.array(labels, dtype=np.int64)]
        return (classes, *arrays)

    return _cached_load("imagefolder", root, sha, variant, cache_dir, decode)

