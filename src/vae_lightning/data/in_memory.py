"""A DataModule for image sets that fit in memory: one uint8 tensor per split, sliced by batch.

Batches are taken by indexing the whole tensor with a batch of indices (no per-sample
`__getitem__`, no collate, no worker processes) and become floats in [0, 1] only after the transfer
to the training device, so the host moves a quarter of the bytes and does no conversion.
A split may instead be any dataset of (uint8 image, label) items, decoded one by one in
`num_workers` processes: the path for sets too large for memory.
"""

from abc import ABC, abstractmethod

import lightning as L
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    Sampler,
    Subset,
    default_collate,
)

Batch = tuple[torch.Tensor, torch.Tensor]


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float32 values in [0, 1]."""
    return images.float().div_(255)


class InMemoryImages(Dataset):
    """uint8 images (N, C, H, W) and their labels (N, ...), indexed by a whole batch at once."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"expected uint8 images of shape (N, C, H, W), got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, indices: torch.Tensor | list[int]) -> Batch:
        # index_select rather than images[index]: advanced indexing of uint8 rows is several
        # times slower on CPU (benchmarks/README.md).
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images.index_select(0, index), self.labels.index_select(0, index)

    def subset(self, index: torch.Tensor) -> "InMemoryImages":
        return InMemoryImages(self.images[index], self.labels[index])


def split_off(dataset: Dataset, n_held_out: int, seed: int) -> tuple[Dataset, Dataset]:
    """A fixed random split into (rest, held out) of n_held_out items; the same for a seed."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    rest, held_out = order[n_held_out:], order[:n_held_out]
    if isinstance(dataset, InMemoryImages):
        return dataset.subset(rest), dataset.subset(held_out)
    return Subset(dataset, rest.tolist()), Subset(dataset, held_out.tolist())


class IndexBatches(Sampler):
    """Batches of indices as tensors: slices of one permutation per epoch (or of 0..n-1).

    Instead of BatchSampler over RandomSampler, which builds a Python list of ints per batch
    that the dataset turns back into a tensor at every step.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, generator: torch.Generator):
        self.n, self.batch_size, self.shuffle, self.generator = n, batch_size, shuffle, generator

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=self.generator)
        else:
            order = torch.arange(self.n)
        return iter(order.split(self.batch_size))


class InMemoryDataModule(L.LightningDataModule, ABC):
    """Subclasses say what their images and labels are and load the three splits, as
    InMemoryImages (sliced by batch) or as datasets of single (uint8 image, label) items.

    As Lightning's contract asks, anything written to disk (downloads, caches) happens in
    `prepare_data`, once per node, and `setup` only loads; a split is also loaded on first use.
    """

    # What the labels are: one class index per image ("class",) or, when `labels_are_factors`,
    # the grid indices of the named factors of variation, one label column each.
    label_names: tuple[str, ...] = ("class",)
    labels_are_factors: bool = False

    def __init__(self, batch_size: int = 128, eval_batch_size: int = 500, num_workers: int = 0):
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.splits: dict[str, Dataset] | None = None

    @property
    @abstractmethod
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width), known before the data is loaded."""

    @abstractmethod
    def load_splits(self) -> dict[str, Dataset]:
        """The "train", "val" and "test" splits."""

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            self.splits = self.load_splits()

    def split(self, name: str) -> Dataset:
        self.setup()
        return self.splits[name]

    def examples(self, split: str, n: int) -> Batch:
        """The first n images of a split as floats in [0, 1], with their labels."""
        dataset = self.split(split)
        first = list(range(min(n, len(dataset))))
        if isinstance(dataset, InMemoryImages):
            images, labels = dataset[first]
        else:
            images, labels = default_collate([dataset[i] for i in first])
        return to_unit_float(images), labels

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        dataset = self.split(name)
        batch_size = self.batch_size if shuffle else self.eval_batch_size
        if not isinstance(dataset, InMemoryImages):
            workers = self.num_workers
            return DataLoader(
                dataset, batch_size, shuffle, num_workers=workers, persistent_workers=workers > 0
            )
        # batch_size=None turns off automatic batching: each sampled tensor of indices is one
        # __getitem__ call, so a batch is a single tensor slice.
        # Under DDP, Lightning wraps this sampler in a DistributedSamplerWrapper, which gives each
        # process every n-th batch of the order the process draws itself: a generator seeded
        # alike in all processes (seed_everything ran in each) makes that order the same for all,
        # so the shards are disjoint. It advances each epoch, so epochs are still shuffled apart.
        generator = torch.Generator().manual_seed(torch.initial_seed())
        batches = IndexBatches(len(dataset), batch_size, shuffle, generator)
        return DataLoader(dataset, batch_size=None, sampler=batches)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        # No validation split (val_fraction=0): no loader, so Lightning skips validation.
        return self._loader("val", shuffle=False) if len(self.split("val")) else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        images, labels = batch
        return to_unit_float(images), labels
