"""Offline datasets for training and evaluation.

Every dataset here yields ``(image, label)``: ``image`` a uint8 tensor (C, H, W) with C = 1 (grey)
or 3 (RGB), ``label`` an int (-1 when the data has no labels). Transforms, seeding and batching
are added on top by ``SampleView`` and ``iterate_batches``, the same way for every source:

* Fashion-MNIST from its IDX files (``/usr/share/datasets/fashion-mnist`` by default),
* ``ImageFolder`` trees (``root/<class>/<image>``; ``root/train`` and ``root/val`` for splits),
* CIFAR-10/100 in their python format (read with an unpickler that builds arrays and nothing else),
* the real photographs shipped with scikit-image and friends (``zoo.photos``),
* ``SingleImageCrops``: unlimited strongly augmented crops of one photo (Asano et al.,
  arXiv 1904.13132),
* ``PhotoCrops``: random small crops of every shipped colour photo (colour-prediction methods).

An unreadable or truncated image file is never fatal: ``ImageFolder`` returns ``None`` for it, the
collate function drops it and counts it, and the engine and ``zoo eval`` report the count.
``open_dataset(spec, split)`` turns a ``--data`` string into one of these.
"""

from __future__ import annotations

import functools
import gzip
import math
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from zoo.errors import UsageError, ZooError
from zoo.photos import IMAGE_SUFFIXES, read_image

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")


class DataError(ZooError):
    """Missing or malformed data (a whole file or folder, not one bad image)."""


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------

class TensorImages(Dataset):
    """Images already decoded into one uint8 tensor (N, C, H, W), with labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, name: str, classes: Sequence[str] = ()):
        self.images, self.labels, self.name, self.classes = images, labels, name, tuple(classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), gzipped or not, as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read {path}: {err}; the file is truncated or not an IDX file") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(dims):
        raise DataError(f"{path} holds {body.size} values, its header promises {math.prod(dims)}: truncated file")
    return body.reshape(dims)


def fashion_mnist(root: str | Path = FASHION_MNIST_DIR, split: str = "train") -> TensorImages:
    """Fashion-MNIST ``train`` (60,000) or ``test`` (10,000) as 1x28x28 uint8 images."""
    root = Path(root)
    prefix = {"train": "train", "test": "t10k"}[_check_split(split, ("train", "test"))]

    def find(kind: str) -> Path:
        for name in (f"{prefix}-{kind}-ubyte.gz", f"{prefix}-{kind}-ubyte"):
            if (root / name).is_file():
                return root / name
        raise DataError(f"Fashion-MNIST not found in {root} (no {prefix}-{kind}-ubyte[.gz]); install the Debian "
                        "package dataset-fashion-mnist (`make data`) or pass --data PATH")

    images, labels = read_idx(find("images-idx3")), read_idx(find("labels-idx1"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"Fashion-MNIST files in {root} do not match: {images.shape} images, {labels.shape} labels")
    return TensorImages(torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64)),
                        f"Fashion-MNIST {split}", FASHION_MNIST_CLASSES)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; any other global (code) is refused."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR batches hold only arrays")


def _load_cifar_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnly(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError) as err:
        raise DataError(f"cannot read CIFAR batch {path}: {err}") from None
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}


def cifar(root: str | Path, split: str = "train") -> TensorImages:
    """CIFAR-10 (``data_batch_1..5``, ``test_batch``) or CIFAR-100 (``train``, ``test``), python format."""
    root = Path(root)
    for sub in ("cifar-10-batches-py", "cifar-100-python"):
        if (root / sub).is_dir():
            root = root / sub
    split = _check_split(split, ("train", "test"))
    if (root / "data_batch_1").is_file():
        files = [root / f"data_batch_{i}" for i in range(1, 6)] if split == "train" else [root / "test_batch"]
        label_key, name, meta_key = "labels", "CIFAR-10", "label_names"
        meta = root / "batches.meta"
    elif (root / "train").is_file():
        files, label_key, name, meta_key = [root / split], "fine_labels", "CIFAR-100", "fine_label_names"
        meta = root / "meta"
    else:
        raise DataError(f"{root} is not a CIFAR python folder (no data_batch_1 or train file)")
    images, labels = [], []
    for path in files:
        if not path.is_file():
            raise DataError(f"CIFAR file {path} is missing")
        batch = _load_cifar_batch(path)
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(int(v) for v in batch[label_key])
    classes = ()
    if meta.is_file():
        classes = tuple(c.decode() if isinstance(c, bytes) else c for c in _load_cifar_batch(meta).get(meta_key, ()))
    return TensorImages(torch.from_numpy(np.concatenate(images)), torch.tensor(labels), f"{name} {split}", classes)


def decode_image(path: str | Path) -> torch.Tensor | None:
    """(3, H, W) uint8 RGB by sslzoo's one decoder (``zoo.photos.read_image``), or None when the
    file is unreadable, truncated, too large or too elongated."""
    try:
        arr = read_image(path)
    except ZooError:
        return None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class ImageFolder(Dataset):
    """``root/<class>/<image file>``; labels are the sorted class folders. Unreadable files give None."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist")
        self.classes = tuple(sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")))
        self.samples: list[tuple[Path, int]] = []
        for label, cls in enumerate(self.classes):
            self.samples += [(p, label) for p in sorted((self.root / cls).rglob("*"))
                             if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        if not self.samples:
            raise DataError(f"{self.root} holds no images in class sub-folders (expected root/<class>/<image>)")
        self.name = f"ImageFolder {self.root}"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        image = decode_image(path)
        return None if image is None else (image, label)


class Photos(Dataset):
    """The real photographs shipped in installed packages (``zoo.photos``); label = photo number."""

    def __init__(self, names: Sequence[str] | None = None):
        from zoo.photos import load_photo, photo_paths

        available = list(photo_paths())
        self.classes = tuple(names or available)
        self.images = [torch.from_numpy(load_photo(n)).permute(2, 0, 1).contiguous() for n in self.classes]
        self.name = "shipped photos"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], i


class ImageList(Dataset):
    """Decoded (H, W, 3) uint8 arrays in memory, with labels (e.g. ``zoo.retrieval``'s copy-detection set)."""

    def __init__(self, images: Sequence[np.ndarray], labels: Sequence[int], name: str):
        if len(images) != len(labels):
            raise UsageError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.name, self.classes = list(images), [int(v) for v in labels], name, ()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return torch.from_numpy(np.array(self.images[i], dtype=np.uint8)).permute(2, 0, 1).contiguous(), self.labels[i]


class SingleImageCrops(Dataset):
    """Unlimited strongly augmented crops of one photo (Asano, Rupprecht, Vedaldi, arXiv 1904.13132),
    or of several: item ``i`` is then a crop of image ``i mod n``, so each is seen equally often.

    Each item is a new crop: a random crop of half the shorter side (so that the whole photo is
    used, not only its centre), a random-resized crop covering 1/500 to all of that area, a random
    rotation of up to 30 degrees and shear of up to 30 degrees, a centre crop of ``size`` and, with
    probability 0.5, a colour jitter (0.4, 0.4, 0.4, 0.1), following the paper's generation
    settings. Randomness comes from torch's generator, which ``SampleView`` seeds per sample, so
    ``length`` only sets how many crops make one epoch.
    """

    def __init__(self, image: torch.Tensor | Sequence[torch.Tensor], length: int = 50_000, size: int = 64,
                 name: str = "photo"):
        from torchvision.transforms import v2

        self.images = [image] if isinstance(image, torch.Tensor) else list(image)
        if not self.images or any(im.dim() != 3 or im.dtype != torch.uint8 for im in self.images):
            raise UsageError("SingleImageCrops needs (C, H, W) uint8 images")
        self.length, self.size = int(length), int(size)
        self.name = (f"crops of single image {name} at {size}px" if len(self.images) == 1
                     else f"crops of {len(self.images)} images ({name}) at {size}px")
        self.classes = ()
        tail = [v2.RandomResizedCrop(int(math.sqrt(2) * size), scale=(1 / 500, 1.0), antialias=True),
                v2.RandomAffine(degrees=30, shear=30),
                v2.CenterCrop(size),
                v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.5)]
        # the first crop's side depends on the photo: half its shorter side
        self.augment = [v2.Compose([v2.RandomCrop(max(size, min(im.shape[1:]) // 2)), *tail]) for im in self.images]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        k = i % len(self.images)
        return self.augment[k](self.images[k]), -1


def is_colour(image: torch.Tensor, tolerance: int = 2) -> bool:
    """Whether a (C, H, W) uint8 image has colour: some pixel's R, G and B differ by more than
    ``tolerance`` (scikit-image's brick, grass and gravel are grey photos stored as RGB)."""
    if image.shape[0] < 3:
        return False
    x = image[:3].to(torch.int16)
    return bool((x[0] - x[1]).abs().max() > tolerance or (x[1] - x[2]).abs().max() > tolerance)


@functools.cache
def _colour_photos() -> dict[str, torch.Tensor]:
    """The shipped colour photographs as (3, H, W) uint8, decoded once per process (a few seconds)."""
    from zoo.photos import load_photos

    photos = {n: torch.from_numpy(p).permute(2, 0, 1).contiguous() for n, p in load_photos().items()}
    return {n: p for n, p in photos.items() if is_colour(p)}


class PhotoCrops(Dataset):
    """Random ``size`` x ``size`` crops of every shipped colour photograph (grey ones are skipped),
    for the methods that predict colour, which Fashion-MNIST cannot teach.

    Item ``i`` is a crop of photo ``i mod n`` (so every photo is seen equally often): a random-resized
    crop covering ``scale`` of the photo's area (side 10-50 %: object parts and textures rather than
    single-coloured pixels), resized to ``size``, flipped with probability 0.5. Randomness comes from
    torch's generator, which ``SampleView`` seeds per sample; ``length`` sets how many crops make
    one epoch. The label is the photo's number.
    """

    def __init__(self, length: int = 50_000, size: int = 32, scale: tuple[float, float] = (0.01, 0.25)):
        from torchvision.transforms import v2

        photos = _colour_photos()
        if not photos:
            raise DataError("no shipped colour photo found (install scikit-image)")
        self.classes, self.images = tuple(photos), list(photos.values())
        self.length, self.size = int(length), int(size)
        self.name = f"random {size}px crops of {len(self.images)} shipped colour photos"
        self.augment = v2.Compose([v2.RandomResizedCrop(size, scale=scale, antialias=True),
                                   v2.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        k = i % len(self.images)
        return self.augment(self.images[k]), k


class Subset(Dataset):
    """A fixed list of indices into another dataset (keeps its name and classes)."""

    def __init__(self, base: Dataset, indices: Sequence[int], name: str):
        self.base, self.indices, self.name = base, list(indices), name
        self.classes = getattr(base, "classes", ())

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[self.indices[i]]


def limit_dataset(dataset: Dataset, limit: int | None, seed: int = 0) -> Dataset:
    """A fixed random subset of ``limit`` items (the same for a given seed), or the dataset itself."""
    if limit is None or limit >= len(dataset):
        return dataset
    if limit <= 0:
        raise UsageError(f"a data limit must be positive, got {limit}")
    picked = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit]
    name = getattr(dataset, "name", "data")
    return Subset(dataset, sorted(picked.tolist()), f"{name}, random {limit:,} of {len(dataset):,}")


def disjoint_subsets(dataset: Dataset, sizes: Sequence[int], seed: int = 0) -> list[Dataset]:
    """Disjoint fixed random subsets of ``sizes`` items; the first is the one ``limit_dataset`` picks."""
    if sum(sizes) > len(dataset) or min(sizes) <= 0:
        raise UsageError(f"cannot take disjoint subsets of {', '.join(f'{n:,}' for n in sizes)} items "
                         f"from {len(dataset):,}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    name, subsets, start = getattr(dataset, "name", "data"), [], 0
    for size in sizes:
        picked = sorted(order[start:start + size])
        where = "random" if start == 0 else "another random"
        subsets.append(Subset(dataset, picked, f"{name}, {where} {size:,} of {len(dataset):,}"))
        start += size
    return subsets


def describe(dataset: Dataset) -> str:
    """A short human description: "Fashion-MNIST train (60,000)", "Fashion-MNIST train, random 2,000 of 60,000"."""
    name = getattr(dataset, "name", type(dataset).__name__)
    return name if isinstance(dataset, Subset) else f"{name} ({len(dataset):,})"


# ---------------------------------------------------------------------------------------------
# --data strings
# ---------------------------------------------------------------------------------------------

TRAINING_PHOTO_SIDE = 512
KINDS = ("fmnist", "cifar", "folder", "photos", "photo-crops", "image", "photo", "training-photos")


def _check_split(split: str, allowed: Sequence[str]) -> str:
    if split not in allowed:
        raise UsageError(f"split must be one of {', '.join(allowed)}, got {split!r}")
    return split


def _guess_kind(path: Path) -> str:
    if path.is_file():
        return "image"
    if not path.is_dir():
        raise DataError(f"data path {path} does not exist")
    names = {p.name for p in path.iterdir()}
    if any(n.startswith(("train-images-idx3", "t10k-images-idx3")) for n in names):
        return "fmnist"
    if names & {"data_batch_1", "cifar-10-batches-py", "cifar-100-python"} or {"train", "test", "meta"} <= names:
        return "cifar"
    return "folder"


def parse_data_spec(spec: str | None) -> tuple[str, str | None]:
    """``"kind:arg"`` or a bare path -> (kind, arg). None means Fashion-MNIST at its default path."""
    if spec is None or spec in ("fmnist", "fashion-mnist"):
        return "fmnist", None
    if spec in ("photos", "photo-crops", "training-photos"):
        return spec, None
    kind, sep, arg = spec.partition(":")
    if sep and kind in KINDS:
        return kind, arg or None
    return _guess_kind(Path(spec)), spec


def _crop_size(arg: str | None) -> int:
    """``photo-crops:SIZE``'s size: 32 when not given."""
    if arg is None:
        return 32
    if not arg.isdigit() or not 8 <= int(arg) <= 1024:
        raise UsageError(f"photo-crops:SIZE needs a size in pixels from 8 to 1024, got {arg!r}")
    return int(arg)


def open_dataset(spec: str | None, split: str = "train", single_image_length: int = 50_000,
                 single_image_size: int = 64) -> Dataset:
    """The dataset a ``--data`` string names, for ``split`` ("train" or "test").

    Forms: a path (Fashion-MNIST IDX folder, CIFAR python folder, ImageFolder tree, or one image
    file for single-image training), ``fmnist[:PATH]``, ``cifar:PATH``, ``folder:PATH``,
    ``photos`` (all shipped photos), ``photo-crops[:SIZE]`` (random crops of the shipped colour photos,
    32 pixels unless SIZE says), ``photo:NAME`` or ``image:PATH`` (single-image crops),
    ``training-photos`` (single-image crops of each photo in ``zoo.photos.TRAINING_PHOTOS``, never
    of the held-out ones).
    An ImageFolder with ``train/`` and ``val/`` (or ``test/``) sub-folders serves both splits.
    """
    kind, arg = parse_data_spec(spec)
    split = _check_split(split, ("train", "test"))
    if kind == "fmnist":
        return fashion_mnist(arg or FASHION_MNIST_DIR, split)
    if kind == "cifar":
        return cifar(arg, split)
    if kind == "folder":
        root = Path(arg)
        if not root.is_dir():
            raise DataError(f"data path {root} does not exist")
        subs = ("train",) if split == "train" else ("val", "test")
        for sub in subs:
            if (root / sub).is_dir():
                return ImageFolder(root / sub)
        if split == "test":
            raise DataError(f"{root} has no val/ or test/ sub-folder for held-out images")
        return ImageFolder(root)
    if kind == "photos":
        return Photos()
    if kind == "photo-crops":
        if split == "test":
            raise DataError("photo-crops has no held-out split; evaluate on another --data")
        return PhotoCrops(single_image_length, _crop_size(arg))
    if kind == "training-photos":
        if split == "test":
            raise DataError("training-photos has no held-out split; the held-out photos are measured by "
                            "`zoo eval --protocol photo-retrieval`")
        from zoo.photos import training_photos

        photos = training_photos()
        if not photos:
            raise DataError("no shipped training photo found (install scikit-image)")
        from torchvision.transforms.v2 import functional as TF

        # at most 512 px per side: crops of a 1,400-pixel retina cost 10x more and see no more detail
        # at 64 px than those of a 512-pixel one
        images = [TF.resize(torch.from_numpy(p).permute(2, 0, 1).contiguous(), None, max_size=TRAINING_PHOTO_SIDE,
                            antialias=True) if max(p.shape[:2]) > TRAINING_PHOTO_SIDE
                  else torch.from_numpy(p).permute(2, 0, 1).contiguous() for p in photos.values()]
        return SingleImageCrops(images, single_image_length, single_image_size, ", ".join(photos))
    if kind in ("image", "photo"):
        if split == "test":
            raise DataError("single-image data has no held-out split; evaluate on another --data")
        if kind == "photo":
            from zoo.photos import load_photo

            image, name = torch.from_numpy(load_photo(arg or "")).permute(2, 0, 1).contiguous(), arg
        else:
            image, name = decode_image(arg), Path(arg).name
            if image is None:
                raise DataError(f"cannot read image {arg}")
        return SingleImageCrops(image, single_image_length, single_image_size, name)
    raise UsageError(f"unknown data kind {kind!r}; use one of {', '.join(KINDS)}")


# ---------------------------------------------------------------------------------------------
# Per-sample transforms with reproducible randomness, and batching that skips unreadable images
# ---------------------------------------------------------------------------------------------

def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample of one epoch: augmentations do not depend on worker count,
    batch order, rank or resumption, only on (seed, epoch, index)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    return x & (2**63 - 1)


class SampleView(Dataset):
    """``base[i]`` passed through ``transform`` under a per-sample seed; yields (x, label, i) or None.

    ``transform`` maps a uint8 (C, H, W) image to a tensor or a tuple of tensors (several views);
    it must draw its randomness from torch's global generator. Set ``epoch`` before each epoch.
    """

    def __init__(self, base: Dataset, transform: Callable[[torch.Tensor], Any] | None, seed: int = 0):
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        # The CPU generator alone is seeded, and restored afterwards, by hand: torch.manual_seed
        # also seeds every accelerator's generators and fork_rng checks for them, ~80 us a sample
        # between them, as long as the transform of a small image.
        outer = torch.get_rng_state()
        try:
            torch.default_generator.manual_seed(sample_seed(self.seed, self.epoch, i))
            item = self.base[i]
            if item is None:
                return None
            image, label = item
            x = self.transform(image) if self.transform is not None else image
        finally:
            torch.set_rng_state(outer)
        return x, label, i


def collate_skipping(items: list) -> dict[str, Any]:
    """Stack (x, label, index) triples; ``None`` items (unreadable images) are dropped and counted."""
    good = [it for it in items if it is not None]
    batch: dict[str, Any] = {"skipped": len(items) - len(good)}
    if not good:
        return batch
    xs, labels, indices = zip(*good)
    if isinstance(xs[0], (tuple, list)):
        batch["x"] = tuple(torch.stack(v) for v in zip(*xs))
    else:
        batch["x"] = torch.stack(xs)
    batch["label"] = torch.tensor(labels, dtype=torch.long)
    batch["index"] = torch.tensor(indices, dtype=torch.long)
    return batch


@dataclass
class SkipCounter:
    """Counts unreadable images seen by ``iterate_batches``."""

    skipped: int = 0


def iterate_batches(view: Dataset, batch_size: int, order: Sequence[int] | None = None, workers: int = 0,
                    counter: SkipCounter | None = None) -> Iterator[dict[str, Any]]:
    """Batches of ``view`` (a ``SampleView``) in ``order`` (all indices by default); batches whose
    every image was unreadable are skipped, and ``counter`` counts the dropped images."""
    loader = DataLoader(view, batch_size=batch_size, sampler=list(range(len(view))) if order is None else order,
                        collate_fn=collate_skipping, num_workers=workers, persistent_workers=False)
    for batch in loader:
        if counter is not None:
            counter.skipped += batch["skipped"]
        if "x" in batch:
            yield batch
