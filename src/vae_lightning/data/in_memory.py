"""A DataModule for image sets that fit in memory: one uint8 tensor per split, sliced by batch.

Batches are taken by indexing the whole tensor with a batch of indices (no per-sample
`__getitem__`, no collate, no worker processes) and become floats in [0, 1] only after the transfer
to the training device, so the host moves a quarter of the bytes and does no conversion.
A split may instead be any dataset of (uint8 image, label) items, decoded one by one in
`num_workers` processes: the path for sets too large for memory. Both go through one resumable
sampler of index batches, so they see the same batches and resume alike.
"""

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import (
    DataLoader,
    Dataset,
    Sampler,
    Subset,
    default_collate,
)

from vae_lightning.data.classes import UNLABELLED, balanced_subset
from vae_lightning.errors import ConfigError

log = logging.getLogger(__name__)

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


class ItemsByBatch(Dataset):
    """A dataset of single (uint8 image, label) items indexed by a whole batch of indices, as
    InMemoryImages is: the items are decoded one by one (in a worker process, when the loader has
    any) and stacked. So both kinds of split go through the same sampler (IndexBatches), in the
    same order, and resume alike."""

    def __init__(self, items: Dataset):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, indices: torch.Tensor | list[int]) -> Batch:
        return default_collate([self.items[i] for i in torch.as_tensor(indices).tolist()])


class Relabelled(Dataset):
    """A dataset of single (image, label) items with other labels: `labels[i]` for item i."""

    def __init__(self, items: Dataset, labels: torch.Tensor):
        self.items, self.labels = items, labels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, _ = self.items[index]
        return image, self.labels[index]


def labels_of(dataset: Dataset) -> torch.Tensor:
    """The labels of a split's items, read without decoding its images: those of InMemoryImages
    and of the per-sample datasets that keep them as `labels` (image folders), through Subsets."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    return dataset.labels


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

    Epoch e's order is the (e+1)-th epoch's draw the generator makes from the state it came with,
    so the order of an epoch is known from its number alone (Lightning calls `set_epoch` before
    each epoch; without it, each iteration is the next epoch). Resumable: `state_dict` holds the
    epoch and how many of its batches were handed out; after `load_state_dict` the next iteration
    hands out the rest of that epoch's order, as an uninterrupted run would (the state also holds
    the generator's starting state, so the order does not depend on the resumed run's seed).
    The order is drawn at the first batch, not at `iter()`: Lightning calls `iter()` before
    `set_epoch`. The batches handed out are counted by ResumableDataLoader as it returns them:
    worker processes take indices from the sampler ahead of the batches they return.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, generator: torch.Generator):
        self.n, self.batch_size, self.shuffle, self.generator = n, batch_size, shuffle, generator
        self.initial_state = generator.get_state()
        self.drawn = 0  # permutations the generator has drawn since initial_state
        self.epoch = 0  # the epoch the next iteration hands out
        self.current, self.taken = 0, 0  # the epoch being handed out, and its batches returned
        self.skip = 0  # batches of `epoch` the next iteration leaves out (restored by a resume)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.skip = epoch, 0

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.initial_state.clone(), "epoch": self.current, "taken": self.taken}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.initial_state, self.drawn = state["generator"].clone(), 0
        self.generator.set_state(self.initial_state)
        self.epoch, self.skip = int(state["epoch"]), int(state["taken"])
        self.current, self.taken = self.epoch, self.skip

    def batches(self, epoch: int) -> tuple[torch.Tensor, ...]:
        """The batches of `epoch` (of 0..n-1 in order without shuffling)."""
        if not self.shuffle:
            return torch.arange(self.n).split(self.batch_size)
        if epoch < self.drawn:  # an earlier epoch: draw again from the start
            self.generator.set_state(self.initial_state)
            self.drawn = 0
        while True:
            batches = self.draw()
            self.drawn += 1
            if self.drawn > epoch:
                return batches

    def draw(self) -> tuple[torch.Tensor, ...]:
        """One epoch's batches, drawn from the generator: slices of a permutation."""
        return torch.randperm(self.n, generator=self.generator).split(self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.skip >= len(self):  # the restored epoch was used up: the next one
            self.epoch, self.skip = self.epoch + 1, 0
        epoch, skip = self.epoch, self.skip
        self.skip = 0
        batches = self.batches(epoch)
        self.current, self.taken = epoch, skip
        self.epoch = epoch + 1  # where a next iteration goes unless set_epoch says otherwise
        yield from batches[skip:]


class MixedIndexBatches(IndexBatches):
    """Shuffled batches of a split of which only some images are labelled (data.labelled), each
    batch holding labelled and unlabelled ones, as semi-supervised training (M2) needs: an epoch
    is one pass over the unlabelled images, and each batch also holds `per_batch` labelled ones,
    their share of the split rounded up (at least one), taken from permutations of the labelled
    images drawn anew as each is used up (a new epoch starts a new one). The labelled ones come
    first in a batch. An epoch's draw is known from its number, as IndexBatches' is, so its
    batches resume alike."""

    def __init__(
        self,
        labelled: torch.Tensor,
        unlabelled: torch.Tensor,
        batch_size: int,
        generator: torch.Generator,
    ):
        n = len(labelled) + len(unlabelled)
        super().__init__(n, batch_size, shuffle=True, generator=generator)
        self.labelled, self.unlabelled = labelled, unlabelled
        self.per_batch = min(batch_size - 1, -(-batch_size * len(labelled) // n))

    def __len__(self) -> int:
        return -(-len(self.unlabelled) // (self.batch_size - self.per_batch))

    def draw(self) -> tuple[torch.Tensor, ...]:
        shuffled = self.unlabelled[torch.randperm(len(self.unlabelled), generator=self.generator)]
        unlabelled = shuffled.split(self.batch_size - self.per_batch)
        needed = len(unlabelled) * self.per_batch
        cycles = -(-needed // len(self.labelled))
        labelled = torch.cat(
            [
                self.labelled[torch.randperm(len(self.labelled), generator=self.generator)]
                for _ in range(cycles)
            ]
        )
        return tuple(
            torch.cat(pair)
            for pair in zip(labelled[:needed].split(self.per_batch), unlabelled, strict=True)
        )


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position in the epoch Lightning saves in every checkpoint and restores
    on resume (the `state_dict` / `load_state_dict` protocol of its fit loop): the state of its
    IndexBatches sampler, with the batches this loader has returned of the epoch."""

    def __iter__(self) -> Iterator[Any]:
        counting = isinstance(self.sampler, IndexBatches)
        for batch in super().__iter__():
            if counting:
                self.sampler.taken += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict() if isinstance(self.sampler, IndexBatches) else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and isinstance(self.sampler, IndexBatches):
            self.sampler.load_state_dict(state)
        else:  # e.g. under DDP, where Lightning wraps the sampler in a distributed one
            rank_zero_only(log.warning)(
                "the order of the resumed epoch's remaining batches is not restored (the sampler "
                "is a %s, whose position is not saved): the run goes on, not identical to an "
                "uninterrupted one",
                type(self.sampler).__name__,
            )


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
    # The label that is the class (of `label_names`), and the names of the classes, in the order
    # of their indices; None where the labels have no classes.
    class_label: str = "class"
    class_names: tuple[str, ...] | None = None

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int = 500,
        num_workers: int = 0,
        labelled: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.labelled, self.seed = labelled, seed
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
            splits = self.load_splits()
            if self.labelled is not None:
                splits["train"] = self.with_labels_hidden(splits["train"])
            self.splits = splits

    def classes(self, labels: torch.Tensor) -> torch.Tensor:
        """The class index of each image (a view of `labels`, its `class_label` column)."""
        return labels if labels.ndim == 1 else labels[:, self.label_names.index(self.class_label)]

    def with_labels_hidden(self, train: Dataset) -> Dataset:
        """The training split with the class of all but `labelled` images, balanced over the
        classes and drawn with the data's seed, set to UNLABELLED (-1); other label columns (the
        shapes' other factors) are kept. A ConfigError for data.labelled or data.batch_size
        where that cannot be (no classes, too many labels, batches too small to mix)."""
        if self.class_names is None:
            raise ConfigError(
                "data.labelled",
                self.labelled,
                "null: these images have no classes (e.g. CelebA's attributes, a folder without "
                "subfolders)",
            )
        if self.batch_size < 2:
            raise ConfigError(
                "data.batch_size",
                self.batch_size,
                "at least 2 with data.labelled: each batch holds labelled and unlabelled images",
            )
        labels = labels_of(train).clone()
        classes = self.classes(labels)
        # a seed apart from the splits' (seed, seed + 1, seed + 2)
        kept = balanced_subset(classes, self.labelled, self.class_names, self.seed + 3)
        hidden = torch.ones(len(classes), dtype=torch.bool)
        hidden[kept] = False
        classes[hidden] = UNLABELLED
        if isinstance(train, InMemoryImages):
            return InMemoryImages(train.images, labels)
        return Relabelled(train, labels)

    def split(self, name: str) -> Dataset:
        self.setup()
        return self.splits[name]

    def examples(self, split: str, n: int) -> Batch:
        """The first n images of a split as floats in [0, 1], with their labels."""
        dataset = self.by_batch(self.split(split))
        images, labels = dataset[list(range(min(n, len(dataset))))]
        return self.model_input(to_unit_float(images), training=False), labels

    def model_input(self, images: torch.Tensor, training: bool) -> torch.Tensor:
        """Images in [0, 1] as the model sees them; a subclass may binarise them."""
        return images

    @staticmethod
    def by_batch(dataset: Dataset) -> InMemoryImages | ItemsByBatch:
        """A split indexed by a batch of indices at once."""
        return dataset if isinstance(dataset, InMemoryImages) else ItemsByBatch(dataset)

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        dataset = self.by_batch(self.split(name))
        batch_size = self.batch_size if shuffle else self.eval_batch_size
        # Items decoded one by one take worker processes; slices of a tensor take none.
        workers = self.num_workers if isinstance(dataset, ItemsByBatch) else 0
        # batch_size=None turns off automatic batching: each sampled tensor of indices is one
        # __getitem__ call, so a batch is a single tensor slice (or one worker's decoded items).
        # Under DDP, Lightning wraps this sampler in a DistributedSamplerWrapper, which gives each
        # process every n-th batch of the order the process draws itself: a generator seeded
        # alike in all processes (seed_everything ran in each) makes that order the same for all,
        # so the shards are disjoint. It advances each epoch, so epochs are still shuffled apart.
        generator = torch.Generator().manual_seed(torch.initial_seed())
        batches = self.index_batches(name, batch_size, shuffle, generator)
        # A generator of its own for the seed DataLoader draws at every iter() (for its workers'
        # seeds): drawn from the global one, it would make the random states of training depend
        # on when Lightning calls iter(), which differs on resume.
        own = torch.Generator().manual_seed(torch.initial_seed())
        return ResumableDataLoader(
            dataset,
            batch_size=None,
            sampler=batches,
            generator=own,
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    def index_batches(
        self, name: str, batch_size: int, shuffle: bool, generator: torch.Generator
    ) -> IndexBatches:
        """The sampler of a split's batches; of labelled and unlabelled images mixed where some
        of its labels are hidden (data.labelled)."""
        split = self.split(name)
        if shuffle and self.labelled is not None:
            hidden = self.classes(labels_of(split)) == UNLABELLED
            if hidden.any():
                labelled, unlabelled = (~hidden).nonzero()[:, 0], hidden.nonzero()[:, 0]
                return MixedIndexBatches(labelled, unlabelled, batch_size, generator)
        return IndexBatches(len(split), batch_size, shuffle, generator)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        # No validation split (val_fraction=0): no loader, so Lightning skips validation.
        return self._loader("val", shuffle=False) if len(self.split("val")) else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        if isinstance(batch, torch.Tensor):
            return batch  # the model's example_input_array, which Lightning passes through too
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.model_input(to_unit_float(images), training), labels
