"""Real image sets (MNIST family, CIFAR-10, CelebA, image folders) through InMemoryDataModule.

In memory (the default), each official split is decoded once into a uint8 tensor and cached as
one file per (set, where it was found, split, size); later runs load that file. Otherwise the
images are decoded one by one at every step, for sets that do not fit in memory.

A cache file is written and checked as cache.py says: a damaged one is rebuilt from the source
with one warning, never used.

An image folder may hold files that cannot be decoded: `unreadable="skip"` leaves them out with
one warning naming them and their number, `"stop"` stops at the first with one line naming it.
"""

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.datasets.folder import find_classes

from vae_lightning.data.cache import images_problem, load_checked, one_line, save_images
from vae_lightning.data.classes import CLASS_NAMES
from vae_lightning.data.in_memory import Batch, InMemoryDataModule, InMemoryImages, split_off
from vae_lightning.data.sources import ImageFiles, Source, UnreadableImage, find_source
from vae_lightning.errors import ConfigError, UnreadableImageError
from vae_lightning.options import UNREADABLE
from vae_lightning.progress import Progress
from vae_lightning.storage import save_atomically

log = logging.getLogger(__name__)

NAMED_IN_WARNING = 5  # unreadable files named in the warning; the rest are counted


class _Tolerant(Dataset):
    """The items of a per-sample dataset as (index, item), or (index, the UnreadableImage it
    raised): decoding goes on past a broken file, in a worker too, and the caller decides.
    With `keep=False` only the index of a readable item comes back (a readability scan)."""

    def __init__(self, dataset: Dataset, keep: bool = True):
        self.dataset, self.keep = dataset, keep

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        try:
            item = self.dataset[index]
        except UnreadableImage as error:
            return index, error
        return index, item if self.keep else None


def _collate(items: list[tuple[int, Any]]) -> tuple[list[int], Batch | None, list[Any]]:
    """(indices of the readable items, their batch or None, the UnreadableImages)."""
    bad = [item for _, item in items if isinstance(item, UnreadableImage)]
    good = [(index, item) for index, item in items if not isinstance(item, UnreadableImage)]
    kept = [item for _, item in good if item is not None]
    return [index for index, _ in good], default_collate(kept) if kept else None, bad


def _stop_at(unreadable: str) -> UnreadableImageError:
    return UnreadableImageError(
        f"cannot read the image file {unreadable}: replace or remove it, or set "
        "data.unreadable=skip to leave unreadable files out"
    )


def decoded_batches(
    dataset: Dataset,
    num_workers: int,
    description: str,
    unreadable: str = "skip",
    keep: bool = True,
    skipped: list[UnreadableImage] | None = None,
) -> Iterator[tuple[list[int], Batch | None]]:
    """Every item of a per-sample dataset decoded in `num_workers` processes, as (indices,
    batch) in order, with progress. An item that raises UnreadableImage (a file of an image
    folder that cannot be decoded) stops it with UnreadableImageError (`unreadable="stop"`) or
    is left out, added to `skipped` and named in one warning at the end (`"skip"`)."""
    skipped = [] if skipped is None else skipped
    loader = DataLoader(
        _Tolerant(dataset, keep), batch_size=256, num_workers=num_workers, collate_fn=_collate
    )
    with Progress(description, len(dataset), "images") as progress:
        for indices, batch, bad in loader:
            if bad and unreadable == "stop":
                raise _stop_at(str(bad[0]))
            skipped += bad
            yield indices, batch
            progress.advance(len(indices) + len(bad))
    if len(skipped) == len(dataset) and skipped:
        raise UnreadableImageError(
            f"none of the {len(dataset)} image files can be read, e.g. {skipped[0]}"
        )
    if skipped:
        named = ", ".join(map(str, skipped[:NAMED_IN_WARNING]))
        more = len(skipped) - NAMED_IN_WARNING
        log.warning(
            "%s: %d of %d image files cannot be read and are left out (data.unreadable=skip): %s%s",
            description,
            len(skipped),
            len(dataset),
            one_line(named, 2000),
            f" and {more} more" if more > 0 else "",
        )


def decode_all(
    dataset: Dataset,
    num_workers: int,
    description: str = "decoding images",
    unreadable: str = "skip",
    skipped: list[UnreadableImage] | None = None,
) -> InMemoryImages:
    """Every item of a per-sample dataset, decoded in `num_workers` processes, as one tensor
    (unreadable files left out or stopping it: see decoded_batches)."""
    if isinstance(dataset, InMemoryImages):
        return dataset
    decoded = decoded_batches(dataset, num_workers, description, unreadable, True, skipped)
    batches = [batch for _, batch in decoded]
    parts = [batch for batch in batches if batch is not None]
    return InMemoryImages(*(torch.cat(part) for part in zip(*parts, strict=True)))


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(name, str) for name in value)


class ImageDataModule(InMemoryDataModule):
    """The set `name` (see sources.DATASETS) from `root`, as (channels, image_size, image_size).

    Splits: test is the official one (or a `test_fraction` of a folder, which has none); val is
    `val_fraction` of the training images, held out with the fixed `seed`. `size` keeps a fixed
    random subset of at most that many images per split. `binarize="dynamic"` draws binary
    images with the grey values as probabilities: afresh for each training batch, and one fixed
    draw for validation and test so their losses compare across epochs. `unreadable`: what to do
    with a file of an image folder that cannot be decoded, "skip" it (one warning) or "stop".
    `labelled`: keep that many training labels, balanced over the classes (see
    InMemoryDataModule.with_labels_hidden); None keeps all.
    """

    def __init__(
        self,
        name: str,
        root: str,
        cache_dir: str,
        image_size: int = 28,
        channels: int = 1,
        download: bool = False,
        in_memory: bool = True,
        binarize: str | None = None,
        size: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int = 500,
        num_workers: int = 0,
        unreadable: str = "skip",
        labelled: int | None = None,
    ):
        super().__init__(batch_size, eval_batch_size, num_workers, labelled, seed)
        if unreadable not in UNREADABLE:
            raise ConfigError("data.unreadable", unreadable, " or ".join(UNREADABLE))
        self.name, self.root, self.cache_dir = name, Path(root), Path(cache_dir)
        self.image_size, self.channels = image_size, channels
        self.download, self.in_memory, self.binarize = download, in_memory, binarize
        self.size, self.val_fraction, self.test_fraction = size, val_fraction, test_fraction
        self.unreadable = unreadable
        self.eval_threshold: torch.Tensor | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    @property
    def label_names(self) -> tuple[str, ...]:
        if self.name == "celeba":  # 40 binary attributes
            return tuple(f"attribute {i}" for i in range(40))
        return ("class",)

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The set's class names; a folder's are its subfolders' (None without subfolders)."""
        if self.name != "folder":
            return CLASS_NAMES.get(self.name)
        try:
            return tuple(find_classes(str(self.root))[0])
        except FileNotFoundError:
            return None

    def cache_path(self, source: Source, split: str) -> Path:
        where = hashlib.sha1(source.location.encode()).hexdigest()[:8]
        c, h, w = self.image_shape
        return self.cache_dir / source.name / f"{split}-{c}x{h}x{w}-{where}.pt"

    def readable_path(self, source: Source, split: str) -> Path:
        """Where the indices of a folder's readable files are kept (in_memory=false)."""
        where = hashlib.sha1(source.location.encode()).hexdigest()[:8]
        return self.cache_dir / source.name / f"{split}-readable-{where}.pt"

    def cache_problem(self, data: Any) -> str | None:
        """What is wrong with the contents of a cache file, or None: its images and labels (see
        cache.images_problem), and the files left out as unreadable, when it lists them."""
        wrong = images_problem(data, self.image_shape, extra=("unreadable",))
        if wrong is None and not _names(data.get("unreadable", [])):
            return "unreadable not a list of file names"
        return wrong

    def build_cache(self, source: Source, split: str) -> InMemoryImages | None:
        """Decode a split once and cache it; None when its cache file already exists."""
        if self.cache_path(source, split).is_file():
            return None
        return self.decode_and_cache(source, split)

    def decode_and_cache(self, source: Source, split: str) -> InMemoryImages:
        """Decode a split and write its cache file, over any that is there."""
        path = self.cache_path(source, split)
        description = f"decoding {source.name} {split}"
        skipped: list[UnreadableImage] = []
        split_data = decode_all(
            source.open(split), self.num_workers, description, self.unreadable, skipped
        )
        # the files left out are kept too: a later run with unreadable=stop stops at them
        save_images(path, split_data, unreadable=[str(error) for error in skipped])
        log.info(
            "%s %s: %d images decoded, cached in %s", source.name, split, len(split_data), path
        )
        return split_data

    def load_cached(self, source: Source, split: str) -> InMemoryImages:
        """A split as uint8 tensors: from its cache file, or decoded now and cached (also when
        the file is damaged: see load_checked)."""
        data = load_checked(self.cache_path(source, split), self.cache_problem)
        if data is None:
            return self.decode_and_cache(source, split)
        self.check_left_out(data.get("unreadable", []))
        return InMemoryImages(data["images"], data["labels"])

    def check_left_out(self, unreadable: list[str]) -> None:
        """Files found unreadable when a cache was built stop a run with unreadable=stop."""
        if unreadable and self.unreadable == "stop":
            raise _stop_at(unreadable[0])

    def readable_files(self, source: Source, split: str) -> Dataset:
        """A split to decode item by item (in_memory=false), less the files of an image folder
        that cannot be decoded. Which those are is found once, by decoding every file, and kept
        as a small file beside the caches; later runs, and the other processes, read it."""
        files = source.open(split)
        if not isinstance(files, ImageFiles):
            return files  # nothing else raises UnreadableImage: nothing to scan for

        def problem(data: Any) -> str | None:
            if not isinstance(data, dict) or set(data) != {"readable", "unreadable"}:
                return "not a dict of readable and unreadable files"
            readable = data["readable"]
            if not isinstance(readable, torch.Tensor) or not _names(data["unreadable"]):
                return "readable not a tensor, or unreadable not a list of file names"
            if readable.dtype != torch.int64 or readable.ndim != 1:
                return f"indices {readable.dtype} {tuple(readable.shape)}, not int64 (N,)"
            if len(readable) and not (readable.min() >= 0 and readable.max() < len(files)):
                return f"indices outside 0..{len(files) - 1}"
            return None

        path = self.readable_path(source, split)
        data = load_checked(path, problem)
        if data is None:
            description = f"checking {source.name} {split}"
            skipped: list[UnreadableImage] = []
            scan = decoded_batches(
                files, self.num_workers, description, self.unreadable, False, skipped
            )
            readable = torch.tensor([i for indices, _ in scan for i in indices], dtype=torch.long)
            data = {"readable": readable, "unreadable": [str(error) for error in skipped]}
            save_atomically(data, path)
        self.check_left_out(data["unreadable"])
        return files.subset(data["readable"].tolist())

    def find(self) -> Source:
        return find_source(self.name, self.root, self.download, self.image_size, self.channels)

    def prepare_data(self) -> None:
        """Find the set (downloading it when `download` says so) and build its cache files (or,
        with in_memory=false, the list of an image folder's readable files)."""
        source = self.find()
        for split in source.splits:
            if self.in_memory:
                self.build_cache(source, split)
            elif not self.readable_path(source, split).is_file():
                self.readable_files(source, split)

    def load_splits(self) -> dict[str, Dataset]:
        source = self.find()
        load = self.load_cached if self.in_memory else self.readable_files
        if "test" in source.splits:
            train, test = load(source, "train"), load(source, "test")
        else:
            # An image folder's unreadable files are left out here, before test and val are
            # split off: the split is then drawn over the readable images only, with the fixed
            # seeds, the same in memory or not and at every run (the same files fail each time,
            # and the cache key changes with any file), and each split is as large as its
            # fraction says. Finding them costs a decode of every file: done once, when the
            # cache (or the list of readable files) is built, not at each listing of the folder.
            everything = load(source, "all")
            n_test = round(self.test_fraction * len(everything))
            train, test = split_off(everything, n_test, self.seed)
        train, val = split_off(train, round(self.val_fraction * len(train)), self.seed + 1)
        splits = {"train": train, "val": val, "test": test}
        if self.size is not None:
            splits = {
                name: split_off(data, min(self.size, len(data)), self.seed + 2)[1]
                for name, data in splits.items()
            }
        return splits

    def model_input(self, images: torch.Tensor, training: bool) -> torch.Tensor:
        """Images in [0, 1] as the model sees them: binarised when `binarize` says so."""
        if self.binarize != "dynamic":
            return images
        if training:
            return torch.bernoulli(images)
        if self.eval_threshold is None:
            generator = torch.Generator().manual_seed(self.seed)
            self.eval_threshold = torch.rand(self.image_shape, generator=generator)
        # One uniform threshold per pixel position, the same for every image: each image is
        # still an exact Bernoulli draw (independent pixels), and the same at every epoch.
        return (images > self.eval_threshold.to(images.device)).to(images.dtype)
