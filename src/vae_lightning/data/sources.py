"""Where each real image set comes from, and how one of its splits is read as uint8 images.

A split is opened either whole, as `InMemoryImages` (sets stored as arrays: the MNIST family,
CIFAR-10), or as a per-sample dataset of (uint8 (C, H, W), label) that decodes one file per item
(CelebA, image folders). Every image leaves here at the configured size and channel count.
"""

import gzip
import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import find_classes, make_dataset
from torchvision.transforms.v2 import functional as F

from vae_lightning.data.in_memory import InMemoryImages
from vae_lightning.errors import ConfigError

# name -> torchvision class; its files live in ROOT/<class name>/raw, as torchvision puts them
IDX_SETS = {
    "mnist": torchvision.datasets.MNIST,
    "fashion_mnist": torchvision.datasets.FashionMNIST,
    "kmnist": torchvision.datasets.KMNIST,
}
# Where Debian's dataset-fashion-mnist package installs the four gzipped IDX files.
SYSTEM_DIRS = {"fashion_mnist": [Path("/usr/share/datasets/fashion-mnist")]}
DATASETS = (*IDX_SETS, "cifar10", "celeba", "folder")
# the formats read here (Pillow reads them all)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp")


def fit_images(images: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """uint8 images (..., C, H, W) with `channels` channels (1 grey, 3 RGB), the shorter side
    resized to `size` and the centre cropped to size x size."""
    if images.shape[-3] != channels:
        if channels == 1:
            images = F.rgb_to_grayscale(images)
        else:
            images = images.expand(*images.shape[:-3], 3, *images.shape[-2:])
    if tuple(images.shape[-2:]) != (size, size):
        images = F.center_crop(F.resize(images, size, antialias=True), [size, size])
    return images.contiguous()


def read_idx(path: Path) -> torch.Tensor:
    """A uint8 IDX file (the MNIST format), gzipped or not, as a tensor of its shape.

    Read here rather than by torchvision because torchvision opens only the decompressed files
    and checks the md5 of the .gz archives, which Debian's recompressed Fashion-MNIST fails
    (the decompressed bytes are the originals).
    """
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
        data = file.read()
    if data[:3] != b"\0\0\x08":
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).view(shape)


def _idx_files(directory: Path, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) IDX files of a split in a directory, decompressed or gzipped."""
    prefix = {"train": "train", "test": "t10k"}[split]
    found = []
    for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
        path = next((p for p in (directory / stem, directory / f"{stem}.gz") if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


def read_idx_split(directory: Path, split: str, size: int, channels: int) -> InMemoryImages:
    """The "train" or "test" split of an MNIST-family set from its IDX files in `directory`."""
    images_file, labels_file = _idx_files(directory, split)
    images = fit_images(read_idx(images_file).unsqueeze(1), size, channels)
    return InMemoryImages(images, read_idx(labels_file).long())


class UnreadableImage(Exception):
    """An image file that cannot be decoded: its `path` and, in one line, why."""

    def __init__(self, path: Path, reason: str):
        super().__init__(path, reason)  # both in args: it survives pickling out of a worker
        self.path, self.reason = path, reason

    def __str__(self) -> str:
        return f"{self.path} ({self.reason})"


# What Pillow raises for a file it cannot decode, by decoder: truncated data, a broken chunk,
# not an image at all.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)


def read_image(path: Path, channels: int) -> torch.Tensor:
    """An image file as uint8 (channels, H, W); UnreadableImage when it cannot be decoded.

    With Pillow, as torchvision's ImageFolder reads files: libpng under torchvision.io writes
    some faults (a bad CRC) to the process's stderr on top of the exception it raises."""
    try:
        with Image.open(path) as image:
            return F.pil_to_tensor(image.convert("L" if channels == 1 else "RGB"))
    except _DECODE_ERRORS as error:
        raise UnreadableImage(path, " ".join(str(error).split()) or type(error).__name__) from None


class ImageFiles(Dataset):
    """Image files decoded one per item, fitted to size x size with `channels` channels; an
    item whose file cannot be decoded raises UnreadableImage."""

    def __init__(self, paths: list[Path], labels: list[int], size: int, channels: int):
        self.paths, self.labels = paths, torch.tensor(labels, dtype=torch.long)
        self.size, self.channels = size, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = read_image(self.paths[index], self.channels)
        return fit_images(image, self.size, self.channels), self.labels[index]

    def subset(self, indices: list[int]) -> "ImageFiles":
        """These files only, in the order given."""
        return ImageFiles(
            [self.paths[i] for i in indices],
            self.labels[indices].tolist(),
            self.size,
            self.channels,
        )


class FittedImages(Dataset):
    """A torchvision dataset of PIL images, each turned into a fitted uint8 tensor."""

    def __init__(self, dataset: Dataset, size: int, channels: int):
        self.dataset, self.size, self.channels = dataset, size, channels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.dataset[index]
        return fit_images(F.pil_to_tensor(image), self.size, self.channels), torch.as_tensor(label)


@dataclass
class Source:
    """One image set found on disk: `location` (part of the cache key), its official `splits`
    (("train", "test"), or ("all",) when it has none) and `open(split)` to read one."""

    name: str
    location: str
    splits: tuple[str, ...]
    open: Callable[[str], Dataset]


def _missing(name: str, root: Path, expected: str) -> ConfigError:
    return ConfigError(
        "data.root",
        str(root),
        f"no {name} files found in {expected}; put them there, point data.root at the folder "
        "that holds them, or add data.download=true to download them (needs network)",
    )


def _torchvision(make: Callable[[bool], Dataset], name: str, root: Path, download: bool):
    """A torchvision dataset; offline and without its files, the one-line error instead."""
    try:
        return make(download)
    except (RuntimeError, OSError) as error:
        if not download:
            raise _missing(name, root, str(root)) from None
        raise ConfigError("data.download", True, f"downloading {name} failed: {error}") from None


def _idx_source(name: str, root: Path, download: bool, size: int, channels: int) -> Source:
    raw = root / IDX_SETS[name].__name__ / "raw"
    candidates = [raw, root, *SYSTEM_DIRS.get(name, [])]
    found = next((d for d in candidates if all(_idx_files(d, s) for s in ("train", "test"))), None)
    if found is None and download:
        for train in (True, False):
            _torchvision(
                lambda dl, t=train: IDX_SETS[name](root, train=t, download=dl), name, root, download
            )
        found = raw
    if found is None:
        where = " or ".join(str(d) for d in candidates[:2])
        raise _missing(name, root, f"{where} (train-images-idx3-ubyte[.gz] and the other three)")
    return Source(
        name,
        str(found.resolve()),
        ("train", "test"),
        lambda split: read_idx_split(found, split, size, channels),
    )


def _cifar10_source(root: Path, download: bool, size: int, channels: int) -> Source:
    def open_split(split: str) -> InMemoryImages:
        dataset = _torchvision(
            lambda dl: torchvision.datasets.CIFAR10(root, train=split == "train", download=dl),
            "cifar10",
            root,
            download,
        )
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2)
        return InMemoryImages(fit_images(images, size, channels), torch.tensor(dataset.targets))

    if not download and not (root / "cifar-10-batches-py").is_dir():
        raise _missing("cifar10", root, str(root / "cifar-10-batches-py"))
    return Source(
        "cifar10", str((root / "cifar-10-batches-py").resolve()), ("train", "test"), open_split
    )


def _celeba_source(root: Path, download: bool, size: int, channels: int) -> Source:
    def open_split(split: str) -> Dataset:
        dataset = _torchvision(
            lambda dl: torchvision.datasets.CelebA(root, split=split, download=dl),
            "celeba",
            root,
            download,
        )
        return FittedImages(dataset, size, channels)  # labels: the 40 binary attributes

    if not download and not (root / "celeba" / "img_align_celeba").is_dir():
        raise _missing("celeba", root, str(root / "celeba"))
    return Source("celeba", str((root / "celeba").resolve()), ("train", "test"), open_split)


def _folder_source(root: Path, size: int, channels: int) -> Source:
    """Every image under root; labelled by top-level subfolder as in ImageFolder, else 0."""
    samples: list[tuple[str, int]] = []
    if root.is_dir():
        try:
            _, class_to_idx = find_classes(str(root))
            samples = make_dataset(str(root), class_to_idx, IMAGE_EXTENSIONS, allow_empty=True)
        except FileNotFoundError:  # no subfolders: the images sit in root itself
            pass
        if not samples:
            files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            samples = [(str(p), 0) for p in files]
    if not samples:
        raise ConfigError(
            "data.root",
            str(root),
            f"a folder holding images ({', '.join(IMAGE_EXTENSIONS)}), "
            "directly or in one subfolder per class",
        )
    paths = [Path(p) for p, _ in samples]
    # The cache key changes when any file is added, removed or rewritten.
    listing = "\n".join(f"{p}:{s.st_size}:{s.st_mtime_ns}" for p in paths if (s := p.stat()))
    digest = hashlib.sha1(listing.encode()).hexdigest()[:12]
    files = ImageFiles(paths, [label for _, label in samples], size, channels)
    return Source(f"folder-{root.name}", f"{root.resolve()}#{digest}", ("all",), lambda _: files)


def find_source(name: str, root: Path, download: bool, size: int, channels: int) -> Source:
    """The set `name` under `root`, or a ConfigError saying where its files were expected."""
    if name in IDX_SETS:
        return _idx_source(name, root, download, size, channels)
    if name == "cifar10":
        return _cifar10_source(root, download, size, channels)
    if name == "celeba":
        return _celeba_source(root, download, size, channels)
    if name == "folder":
        return _folder_source(root, size, channels)
    raise ConfigError("data.name", name, f"one of {', '.join(DATASETS)}")
