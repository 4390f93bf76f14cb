"""Real image sets (MNIST family, CIFAR-10, CelebA, image folders) through InMemoryDataModule.

In memory (the default), each official split is decoded once into a uint8 tensor and cached as
one file per (set, where it was found, split, size); later runs load that file. Otherwise the
images are decoded one by one at every step, for sets that do not fit in memory.
"""

import hashlib
import logging
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from vae_lightning.data.in_memory import Batch, InMemoryDataModule, InMemoryImages, split_off
from vae_lightning.data.sources import Source, find_source

log = logging.getLogger(__name__)


def decode_all(dataset: Dataset, num_workers: int) -> InMemoryImages:
    """Every item of a per-sample dataset, decoded in `num_workers` processes, as one tensor."""
    if isinstance(dataset, InMemoryImages):
        return dataset
    batches = list(DataLoader(dataset, batch_size=256, num_workers=num_workers))
    return InMemoryImages(*(torch.cat(parts) for parts in zip(*batches, strict=True)))


def save_atomically(data: dict[str, torch.Tensor], path: Path) -> None:
    """Write to a temporary file beside `path`, then rename: a crash leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(data, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


class ImageDataModule(InMemoryDataModule):
    """The set `name` (see sources.DATASETS) from `root`, as (channels, image_size, image_size).

    Splits: test is the official one (or a `test_fraction` of a folder, which has none); val is
    `val_fraction` of the training images, held out with the fixed `seed`. `size` keeps a fixed
    random subset of at most that many images per split. `binarize="dynamic"` draws binary
    images with the grey values as probabilities: afresh for each training batch, and one fixed
    draw for validation and test so their losses compare across epochs.
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
    ):
        super().__init__(batch_size, eval_batch_size, num_workers)
        self.name, self.root, self.cache_dir = name, Path(root), Path(cache_dir)
        self.image_size, self.channels = image_size, channels
        self.download, self.in_memory, self.binarize = download, in_memory, binarize
        self.size, self.val_fraction, self.test_fraction = size, val_fraction, test_fraction
        self.seed = seed
        self.eval_threshold: torch.Tensor | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    @property
    def label_names(self) -> tuple[str, ...]:
        if self.name == "celeba":  # 40 binary attributes
            return tuple(f"attribute {i}" for i in range(40))
        return ("class",)

    def cache_path(self, source: Source, split: str) -> Path:
        where = hashlib.sha1(source.location.encode()).hexdigest()[:8]
        c, h, w = self.image_shape
        return self.cache_dir / source.name / f"{split}-{c}x{h}x{w}-{where}.pt"

    def build_cache(self, source: Source, split: str) -> InMemoryImages | None:
        """Decode a split once and cache it; None when its cache file already exists."""
        path = self.cache_path(source, split)
        if path.is_file():
            return None
        split_data = decode_all(source.open(split), self.num_workers)
        save_atomically({"images": split_data.images, "labels": split_data.labels}, path)
        log.info(
            "%s %s: %d images decoded, cached in %s", source.name, split, len(split_data), path
        )
        return split_data

    def load_cached(self, source: Source, split: str) -> InMemoryImages:
        """A split as uint8 tensors: from its cache file, or decoded now and cached."""
        built = self.build_cache(source, split)
        if built is not None:
            return built
        data = torch.load(self.cache_path(source, split), weights_only=True)
        return InMemoryImages(data["images"], data["labels"])

    def find(self) -> Source:
        return find_source(self.name, self.root, self.download, self.image_size, self.channels)

    def prepare_data(self) -> None:
        """Find the set (downloading it when `download` says so) and build its cache files."""
        source = self.find()
        if self.in_memory:
            for split in source.splits:
                self.build_cache(source, split)

    def load_splits(self) -> dict[str, Dataset]:
        source = self.find()
        load = (lambda split: self.load_cached(source, split)) if self.in_memory else source.open
        if "test" in source.splits:
            train, test = load("train"), load("test")
        else:
            everything = load("all")
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

    def examples(self, split: str, n: int) -> Batch:
        images, labels = super().examples(split, n)
        return self.model_input(images, training=False), labels

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        images, labels = super().on_after_batch_transfer(batch, dataloader_idx)
        training = self.trainer is not None and self.trainer.training
        return self.model_input(images, training), labels
