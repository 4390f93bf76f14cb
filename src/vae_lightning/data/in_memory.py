"""A DataModule for image sets that fit in memory: one uint8 tensor per split, sliced by batch.

Batches are taken by indexing the whole tensor with a batch of indices (no per-sample
`__getitem__`, no collate, no worker processes) and become floats in [0, 1] only after the transfer
to the training device, so the host moves a quarter of the bytes and does no conversion.
"""

from abc import abstractmethod

import lightning as L
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

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

    def __getitem__(self, indices: list[int]) -> Batch:
        index = torch.as_tensor(indices)
        return self.images[index], self.labels[index]


def split_off(
    images: torch.Tensor, labels: torch.Tensor, n_held_out: int, seed: int
) -> tuple[InMemoryImages, InMemoryImages]:
    """A fixed random split into (rest, held out) of n_held_out images; the same for a seed."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    rest, held_out = order[n_held_out:], order[:n_held_out]
    return (
        InMemoryImages(images[rest], labels[rest]),
        InMemoryImages(images[held_out], labels[held_out]),
    )


class InMemoryDataModule(L.LightningDataModule):
    """Subclasses say what their images look like and load the three splits as InMemoryImages."""

    def __init__(self, batch_size: int = 128, eval_batch_size: int = 500):
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.splits: dict[str, InMemoryImages] | None = None

    @property
    @abstractmethod
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width), known before the data is loaded."""

    @abstractmethod
    def load_splits(self) -> dict[str, InMemoryImages]:
        """The "train", "val" and "test" splits."""

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            self.splits = self.load_splits()

    def split(self, name: str) -> InMemoryImages:
        self.setup()
        return self.splits[name]

    def examples(self, split: str, n: int) -> Batch:
        """The first n images of a split as floats in [0, 1], with their labels."""
        images, labels = self.split(split)[list(range(n))]
        return to_unit_float(images), labels

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        dataset = self.split(name)
        # Under DDP, Lightning wraps this sampler in a DistributedSamplerWrapper, which gives each
        # process every n-th batch of the order the process draws itself: a generator seeded
        # alike in all processes (seed_everything ran in each) makes that order the same for all,
        # so the shards are disjoint. It advances each epoch, so epochs are still shuffled apart.
        generator = torch.Generator().manual_seed(torch.initial_seed())
        order = (
            RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        )
        batch_size = self.batch_size if shuffle else self.eval_batch_size
        # batch_size=None turns off automatic batching: each sampled list of indices is one
        # __getitem__ call, so a batch is a single tensor slice.
        return DataLoader(dataset, batch_size=None, sampler=BatchSampler(order, batch_size, False))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        images, labels = batch
        return to_unit_float(images), labels
