"""Retrieval evaluation: a copy-detection set made from the shipped photos, and mAP / recall@k.

The set follows the spirit of Copydays "strong": every shipped photograph is the source of several
copies, each made by a chain of strong distortions (crops, rotation, colour changes, blur, noise,
heavy JPEG). Images of the same source form one group. Evaluation is leave-one-out over the whole
set: each image queries all the others, and the other members of its group are the positives.
Embeddings are compared by inner product, so pass L2-normalised vectors for cosine similarity.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from zoo.errors import UsageError
from zoo.photos import load_photos

DISTORTIONS = ("crop", "rotate", "colour", "grey", "blur", "noise", "jpeg", "flip", "rescale")


@dataclass(frozen=True)
class Strengths:
    """The random ranges ``distort`` draws from: (low, high) uniform, except the fixed noise sigma.

    The defaults suit photos a few hundred pixels across (the copy-detection set); small images
    such as 28x28 Fashion-MNIST need their own (see ``training.retrieval_benchmark``).
    """

    crop_area: tuple[float, float] = (0.3, 0.7)       # share of the area kept
    min_crop: int = 8                                 # pixels, per side
    rotate_degrees: tuple[float, float] = (10, 30)    # either direction
    rotate_expand: bool = True                        # grow the canvas to hold the whole rotated image
    saturation: tuple[float, float] = (0.2, 2.0)
    contrast: tuple[float, float] = (0.5, 1.6)
    brightness: tuple[float, float] = (0.6, 1.4)
    blur_radius: tuple[float, float] = (1.5, 3.5)     # Gaussian, pixels
    noise_sigma: float = 18.0                         # Gaussian, in 0-255 units
    jpeg_quality: tuple[int, int] = (8, 25)           # integers, high exclusive
    rescale: tuple[float, float] = (0.3, 0.6)         # shrink each side to this share, then back


PHOTO_STRENGTHS = Strengths()


@dataclass
class CopyDetectionSet:
    images: list[np.ndarray]  # (H, W, 3) uint8 RGB
    groups: np.ndarray  # (N,) source-photo index of each image
    names: list[str]  # "<photo>" for originals, "<photo>/<i>:<distortions>" for copies


def _pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(image)


def distort(image: np.ndarray, rng: np.random.Generator, steps: Sequence[str],
            strengths: Strengths = PHOTO_STRENGTHS) -> np.ndarray:
    """Apply the named distortions in order; random strengths come from ``rng`` within ``strengths``."""
    from PIL import Image, ImageEnhance, ImageFilter

    st = strengths
    img = _pil(image).convert("RGB")
    for step in steps:
        w, h = img.size
        if step == "crop":  # keep a share of the area, anywhere in the image
            scale = np.sqrt(rng.uniform(*st.crop_area))
            cw, ch = max(st.min_crop, int(w * scale)), max(st.min_crop, int(h * scale))
            x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            img = img.crop((int(x0), int(y0), int(x0) + cw, int(y0) + ch))
        elif step == "rotate":
            angle = rng.choice([-1, 1]) * rng.uniform(*st.rotate_degrees)
            img = img.rotate(float(angle), resample=Image.BILINEAR, expand=st.rotate_expand)
        elif step == "colour":
            img = ImageEnhance.Color(img).enhance(rng.uniform(*st.saturation))
            img = ImageEnhance.Contrast(img).enhance(rng.uniform(*st.contrast))
            img = ImageEnhance.Brightness(img).enhance(rng.uniform(*st.brightness))
        elif step == "grey":
            img = img.convert("L").convert("RGB")
        elif step == "blur":
            img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(*st.blur_radius)))
        elif step == "noise":
            arr = np.asarray(img, dtype=np.float32) + rng.normal(0, st.noise_sigma, size=(h, w, 3))
            img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
        elif step == "jpeg":
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=int(rng.integers(*st.jpeg_quality)))
            buf.seek(0)
            img = Image.open(buf).convert("RGB")
        elif step == "flip":
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        elif step == "rescale":  # lose resolution: shrink, then enlarge back to the same size
            share = rng.uniform(*st.rescale)
            small = img.resize((max(2, round(w * share)), max(2, round(h * share))), Image.BILINEAR)
            img = small.resize((w, h), Image.BILINEAR)
        else:
            raise UsageError(f"unknown distortion {step!r}; known: {', '.join(DISTORTIONS)}")
    return np.asarray(img, dtype=np.uint8).copy()


def shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` resized (bilinear) so that its longer side is at most ``max_side``."""
    from PIL import Image

    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    return np.asarray(_pil(image).resize((round(w * scale), round(h * scale)), Image.BILINEAR))


# A copy-detection copy: a geometric change, a photometric change and a degradation.
COPY_STAGES = (("crop", "rotate", "flip"), ("colour", "grey"), ("blur", "noise", "jpeg"))


def copy_steps(rng: np.random.Generator, stages: Sequence[Sequence[str]] = COPY_STAGES,
               extra_crop: float = 0.5) -> list[str]:
    """One copy's distortion chain: one step drawn from each stage, after a crop with probability
    ``extra_crop``."""
    steps = [str(rng.choice(list(stage))) for stage in stages]
    if rng.random() < extra_crop:
        steps.insert(0, "crop")
    return steps


def copy_detection_set(copies: int = 7, seed: int = 0, max_side: int = 256,
                       photos: dict[str, np.ndarray] | None = None) -> CopyDetectionSet:
    """Originals plus ``copies`` strongly distorted copies of each shipped photo (deterministic)."""
    photos = load_photos() if photos is None else photos
    if len(photos) < 2:
        raise UsageError("the copy-detection set needs at least 2 source photos")
    rng = np.random.default_rng(seed)
    images, groups, names = [], [], []
    for g, (name, photo) in enumerate(photos.items()):
        original = shrink(photo, max_side)
        images.append(original), groups.append(g), names.append(name)
        for i in range(copies):
            steps = copy_steps(rng)
            images.append(distort(original, rng, steps))
            groups.append(g)
            names.append(f"{name}/{i}:{'+'.join(steps)}")
    return CopyDetectionSet(images, np.asarray(groups), names)


def average_precision(relevant_in_rank_order: np.ndarray, total_relevant: int | None = None) -> float:
    """AP of one ranked list: mean over the relevant items of the precision at their rank."""
    rel = np.asarray(relevant_in_rank_order, dtype=bool)
    total = int(rel.sum()) if total_relevant is None else total_relevant
    if total == 0:
        return 0.0
    hits = np.cumsum(rel)
    ranks = np.nonzero(rel)[0] + 1
    return float((hits[rel] / ranks).sum() / total)


def rank_metrics(query: np.ndarray, database: np.ndarray, query_groups: np.ndarray,
                 database_groups: np.ndarray, ks: Sequence[int] = (1, 5, 10),
                 exclude_self: bool = False) -> dict[str, float]:
    """mAP and recall@k (a query counts as found at k if any positive is in its top k).

    With ``exclude_self`` the query set *is* the database and each query's own row is left out.
    """
    query, database = np.asarray(query, np.float32), np.asarray(database, np.float32)
    if query.ndim != 2 or database.ndim != 2 or query.shape[1] != database.shape[1]:
        raise UsageError(f"embeddings must be (N, D) and (M, D), got {query.shape} and {database.shape}")
    sims = query @ database.T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")
    aps, found = [], {k: [] for k in ks}
    for i in range(len(query)):
        ranked = order[i]
        if exclude_self:
            ranked = ranked[ranked != i]
        rel = database_groups[ranked] == query_groups[i]
        aps.append(average_precision(rel))
        for k in ks:
            found[k].append(bool(rel[:k].any()))
    out = {"mAP": float(np.mean(aps))}
    out.update({f"recall@{k}": float(np.mean(v)) for k, v in found.items()})
    return out


def retrieval_metrics(embeddings: np.ndarray, groups: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Leave-one-out mAP and recall@k over a set such as ``copy_detection_set()``."""
    groups = np.asarray(groups)
    return rank_metrics(embeddings, embeddings, groups, groups, ks=ks, exclude_self=True)
