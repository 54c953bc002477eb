"""Image files, decoded one way for the whole project, and the photographs shipped with it.

``read_image`` is sslzoo's one image decoder (extraction, search, training data, shipped photos):
any file Pillow reads, as (H, W, 3) uint8 RGB with its EXIF orientation applied, 16-bit and
floating-point images scaled to 8 bits (16-bit PNGs no longer saturate, float TIFFs in [0, 1] no
longer turn black), and a cap on the pixels per side and on how elongated an image may be (a
1 x 8000 PNG resized to a 256-pixel shorter side took 4.3 GB). A file it cannot or will not
decode is a one-line ``ZooError``. ``IMAGE_SUFFIXES`` are the files a folder of images holds.

scikit-image (a dependency) ships colour photographs; scikit-learn and matplotlib add a few more
when they are installed. The quickstart, the export parity checks and single-image training use
them, so nothing has to be downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import BinaryIO

import numpy as np

from zoo.errors import UnknownNameError, ZooError

# (package, path inside the package, name). Order is stable: tests and tables rely on it.
_SHIPPED = (
    ("skimage", "data/astronaut.png", "astronaut"),
    ("skimage", "data/chelsea.png", "chelsea"),
    ("skimage", "data/coffee.png", "coffee"),
    ("skimage", "data/rocket.jpg", "rocket"),
    ("skimage", "data/motorcycle_left.png", "motorcycle_left"),
    ("skimage", "data/motorcycle_right.png", "motorcycle_right"),
    ("skimage", "data/hubble_deep_field.jpg", "hubble_deep_field"),
    ("skimage", "data/retina.jpg", "retina"),
    ("skimage", "data/ihc.png", "immunohistochemistry"),
    ("skimage", "data/brick.png", "brick"),
    ("skimage", "data/grass.png", "grass"),
    ("skimage", "data/gravel.png", "gravel"),
    ("sklearn", "datasets/images/china.jpg", "china"),
    ("sklearn", "datasets/images/flower.jpg", "flower"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "grace_hopper"),
)

# The colour-photo models' fixed split of the shipped photos. Held out: never trained on; their
# distorted copies are what those models are measured on, and the quickstart's search query is one
# of them. motorcycle_right is the stereo twin of motorcycle_left (the same scene shifted by a few
# pixels), so it is in neither set: training on it would be training on a held-out photo. Training:
# every other shipped photo found (10 with scikit-learn and matplotlib installed, 8 without).
HELDOUT_PHOTOS = ("astronaut", "chelsea", "coffee", "motorcycle_left")
EXCLUDED_PHOTOS = ("motorcycle_right",)
TRAINING_PHOTOS = tuple(name for _, _, name in _SHIPPED if name not in HELDOUT_PHOTOS + EXCLUDED_PHOTOS)


def photo_paths() -> dict[str, Path]:
    """Name -> path of every shipped photograph found among the installed packages."""
    found: dict[str, Path] = {}
    for package, rel, name in _SHIPPED:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(list(spec.submodule_search_locations)[0]) / rel
        if path.is_file():
            found[name] = path
    return found


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                            ".pbm"})
MAX_SIDE = 1 << 15     # pixels per side
MAX_PIXELS = 1 << 26   # pixels in all (below Pillow's decompression-bomb warning)
MAX_ASPECT = 32        # longer side / shorter side: resizing the shorter side must not blow up the longer


def check_image_size(height: int, width: int, what: str = "image") -> None:
    """One-line ``ZooError`` for an image too large or too elongated to decode and resize safely."""
    short, long = min(height, width), max(height, width)
    if short < 1 or long > MAX_SIDE or height * width > MAX_PIXELS or long > MAX_ASPECT * short:
        raise ZooError(f"{what} is {width}x{height} pixels: sslzoo takes images of at most {MAX_SIDE} pixels per "
                       f"side, {MAX_PIXELS:,} in all and sides at most {MAX_ASPECT}:1")


_QUIETED = False


def _to_rgb8(img) -> np.ndarray:
    """A Pillow image (any mode) as (H, W, 3) uint8 RGB, with 16-bit and float values scaled."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        if img.mode == "F":  # floating point: 0 is black and 1 white
            scale = 1.0
        elif img.mode == "I" and np.nanmax(values, initial=0) <= 255:
            scale = 255.0  # 32-bit integers that hold 8-bit values
        else:
            scale = 65535.0
        grey = np.rint(np.clip(np.nan_to_num(values / scale), 0.0, 1.0) * 255.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def pil_to_rgb8(img, what: str = "image") -> np.ndarray:
    """A Pillow image -> (H, W, 3) uint8 RGB, upright: EXIF orientation applied; CMYK, palette,
    grey and 16-bit or float images converted; an alpha channel dropped, as torchvision's and timm's
    loaders (``convert("RGB")``) do, so features match theirs. Too large or elongated: a ZooError."""
    from PIL import ImageOps

    check_image_size(img.height, img.width, what)
    img = ImageOps.exif_transpose(img)
    img.load()
    return _to_rgb8(img)


def read_image(path: str | Path | BinaryIO, name: str | None = None) -> np.ndarray:
    """Decode an image file (a path, or a binary file object such as an upload's bytes in a
    ``BytesIO``; ``name`` is what the messages call it) to an (H, W, 3) uint8 RGB array, upright
    (EXIF orientation applied); a one-line ZooError if it is unreadable, too large or too elongated."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    global _QUIETED
    if not _QUIETED:  # Pillow warns above its own limit; ours is lower and an error (set once per process:
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # catch_warnings is not
        _QUIETED = True  # thread-safe, and extraction decodes in threads)
    what = path if name is None else name
    try:
        with Image.open(path) as img:
            return pil_to_rgb8(img, f"image {what}")
    except FileNotFoundError:
        raise ZooError(f"image not found: {what}") from None
    except UnidentifiedImageError as err:  # Pillow names a file object by its repr (an address): say it plainly
        reason = err if isinstance(path, (str, Path)) else "not an image file, or a format Pillow cannot read"
        raise ZooError(f"cannot read image {what}: {reason}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ZooError(f"cannot read image {what}: {err}") from None


def load_photo(name: str) -> np.ndarray:
    """One shipped photograph by name (see ``photo_paths``), as (H, W, 3) uint8 RGB."""
    paths = photo_paths()
    if name not in paths:
        raise UnknownNameError("photo", name, paths)
    return read_image(paths[name])


def load_photos(limit: int | None = None) -> dict[str, np.ndarray]:
    """All shipped photographs (the first ``limit``), name -> (H, W, 3) uint8 RGB."""
    names = list(photo_paths())[:limit]
    return {name: load_photo(name) for name in names}


def heldout_photos() -> dict[str, np.ndarray]:
    """The held-out photos (``HELDOUT_PHOTOS``), name -> (H, W, 3) uint8 RGB; all are scikit-image's."""
    return {name: load_photo(name) for name in HELDOUT_PHOTOS}


def training_photos() -> dict[str, np.ndarray]:
    """The training photos (``TRAINING_PHOTOS``) found among the installed packages, name -> RGB."""
    paths = photo_paths()
    return {name: read_image(paths[name]) for name in TRAINING_PHOTOS if name in paths}
