import pytest
import torch

from tests.helpers import make_config
from vae_lightning.data import InMemoryDataModule, shapes
from vae_lightning.data.shapes import (
    FACTOR_SIZES,
    GRID_SIZE,
    ShapesDataModule,
    factor_values,
    render,
    sample_factor_indices,
)


def test_factor_grid_is_the_dsprites_grid():
    assert FACTOR_SIZES == (3, 6, 40, 32, 32) and GRID_SIZE == 737_280
    indices = sample_factor_indices(1000, seed=0)
    assert indices.shape == (1000, 5)
    assert len({tuple(row) for row in indices.tolist()}) == 1000  # distinct grid points
    for column, size in enumerate(FACTOR_SIZES):
        assert indices[:, column].min() >= 0 and indices[:, column].max() < size
    values = factor_values(indices)
    assert values[:, 1].min() >= 0.5 and values[:, 1].max() <= 1.0


def test_rendering_is_deterministic_and_follows_the_factors():
    indices = sample_factor_indices(50, seed=3)
    assert torch.equal(render(indices, 32), render(sample_factor_indices(50, seed=3), 32))
    assert not torch.equal(render(indices, 32), render(sample_factor_indices(50, seed=4), 32))
    # A bigger scale covers more pixels; moving right moves the centre of mass right.
    small, big, left, right = render(
        torch.tensor([[0, 0, 0, 16, 16], [0, 5, 0, 16, 16], [1, 3, 0, 0, 16], [1, 3, 0, 31, 16]]),
        32,
    )
    assert big.float().sum() > 2 * small.float().sum()
    columns = torch.arange(32.0)
    centre = [(img[0].float().sum(0) * columns).sum() / img.float().sum() for img in (left, right)]
    assert centre[0] < 12 < 20 < centre[1]


def test_datamodule_splits_batches_and_labels():
    datamodule = ShapesDataModule(size=1000, image_size=32, batch_size=64, eval_batch_size=100)
    assert datamodule.image_shape == (1, 32, 32)
    datamodule.setup()
    sizes = {name: len(datamodule.split(name)) for name in ("train", "val", "test")}
    assert sizes == {"train": 800, "val": 100, "test": 100}
    all_labels = torch.cat([datamodule.split(name).labels for name in sizes])
    assert len({tuple(row) for row in all_labels.tolist()}) == 1000  # splits are disjoint

    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (64, 1, 32, 32)
    assert labels.shape == (64, 5)
    floats, _ = datamodule.on_after_batch_transfer((images, labels), 0)
    assert floats.dtype == torch.float32 and floats.min() >= 0 and floats.max() <= 1
    assert floats.max() == 1 and 0 < floats.mean() < 0.5  # white shapes on black

    val_batches = list(datamodule.val_dataloader())
    assert [len(b[0]) for b in val_batches] == [100]
    assert torch.equal(val_batches[0][0], datamodule.split("val").images)  # in order


def test_same_seed_same_splits():
    a, b = ShapesDataModule(size=300, seed=1), ShapesDataModule(size=300, seed=1)
    assert torch.equal(a.split("test").images, b.split("test").images)
    assert not torch.equal(
        a.split("test").images, ShapesDataModule(size=300, seed=2).split("test").images
    )


def test_the_shapes_are_rendered_once_into_the_cache_and_loaded_at_later_runs(
    tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    ShapesDataModule(size=300, cache_dir=str(cache)).prepare_data()
    (path,) = list((cache / "shapes").iterdir())
    uncached = ShapesDataModule(size=300)
    uncached.setup()  # rendered, nothing written

    def no_rendering(*args, **kwargs):
        raise AssertionError("rendered again")

    monkeypatch.setattr(shapes, "render", no_rendering)
    second = ShapesDataModule(size=300, cache_dir=str(cache))
    second.prepare_data()
    for name in ("train", "val", "test"):
        assert torch.equal(second.split(name).images, uncached.split(name).images)
        assert torch.equal(second.split(name).labels, uncached.split(name).labels)
    assert list((cache / "shapes").iterdir()) == [path]
    # each size, image size and seed has a file of its own
    others = [{"size": None}, {"image_size": 64}, {"seed": 1}]
    paths = {
        ShapesDataModule(**{"size": 300, "cache_dir": str(cache)} | o).cache_path() for o in others
    }
    assert len(paths | {path}) == 4


def test_the_in_memory_base_class_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        InMemoryDataModule()


def test_the_shapes_data_is_the_same_whatever_the_runs_seed(tmp_path):
    # a sweep over seeds compares models on the same images
    assert make_config(tmp_path, "seed=5").data.seed == make_config(tmp_path, "seed=0").data.seed
