"""Real image sets: Fashion-MNIST (a real subset shipped with the tests, found where Debian's
package puts the whole set), MNIST's official test IDX files, image folders."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torchvision.io import write_png
from torchvision.transforms.v2 import functional as F

from tests.helpers import FASHION_MNIST_SUBSET, ROOT, read_tensorboard, run_script
from vae_lightning.cli import train
from vae_lightning.data import ImageDataModule, sources
from vae_lightning.data.sources import read_idx_split
from vae_lightning.errors import ConfigError

# ROOT/../shared in a checkout beside shared/; a worktree one level deeper finds it further up
MNIST_T10K = next(
    (d / "shared/data/mnist-t10k" for d in ROOT.parents if (d / "shared/data/mnist-t10k").is_dir()),
    ROOT.parent / "shared/data/mnist-t10k",
)
# digits 0..9 in the official MNIST test set
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(autouse=True)
def fashion_mnist_where_debian_puts_it(monkeypatch):
    monkeypatch.setitem(sources.SYSTEM_DIRS, "fashion_mnist", [FASHION_MNIST_SUBSET])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the module: Fashion-MNIST is decoded once, by the first test that needs it."""
    return tmp_path_factory.mktemp("cache")


def fashion_mnist(cache_dir: Path, **options) -> ImageDataModule:
    datamodule = ImageDataModule("fashion_mnist", "/nonexistent", str(cache_dir), **options)
    datamodule.setup()
    return datamodule


def test_fashion_mnist_from_the_system_folder_sizes_shapes_and_values(cache_dir):
    datamodule = fashion_mnist(cache_dir)
    assert datamodule.image_shape == (1, 28, 28)
    train, val, test = (datamodule.split(name) for name in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (540, 60, 200)  # val_fraction 0.1 of 600
    for split in (train, val, test):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (1, 28, 28)
        assert split.images.max() == 255 and split.images.min() == 0
    # the official test split, in its order: first labels 9 2 1 1 6, every class
    assert test.labels[:5].tolist() == [9, 2, 1, 1, 6] and test.labels.unique().numel() == 10
    # the first 600 training labels, whatever the split drew for val
    counts = torch.bincount(torch.cat([train.labels, val.labels])).tolist()
    assert counts == [62, 66, 57, 58, 59, 58, 66, 61, 58, 55]
    assert 0.28 < train.images.float().mean() / 255 < 0.29  # Fashion-MNIST's known mean 0.286

    images, labels = next(iter(datamodule.train_dataloader()))
    floats, _ = datamodule.on_after_batch_transfer((images, labels), 0)
    assert floats.shape == (128, 1, 28, 28) and floats.dtype == torch.float32
    assert floats.min() >= 0 and floats.max() <= 1 and len(torch.unique(floats)) > 2


def test_cache_is_one_file_per_split_and_is_reused(cache_dir, monkeypatch):
    first = fashion_mnist(cache_dir)
    files = sorted(p.name for p in (cache_dir / "fashion_mnist").iterdir())
    assert len(files) == 2 and files[0].startswith("test-1x28x28-") and files[1].startswith("train")

    def no_decoding(path):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(sources, "read_idx", no_decoding)
    second = fashion_mnist(cache_dir)
    for name in ("train", "val", "test"):
        assert torch.equal(first.split(name).images, second.split(name).images)
        assert torch.equal(first.split(name).labels, second.split(name).labels)
    # another size is another file, decoded from the IDX files again
    with pytest.raises(AssertionError, match="decoded"):
        fashion_mnist(cache_dir, image_size=32)


def test_prepare_data_writes_the_cache_and_setup_only_loads_it(tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    preparing = ImageDataModule("fashion_mnist", "/nonexistent", str(cache_dir))
    preparing.prepare_data()  # Lightning's once-per-node step: every split cached, none loaded
    assert len(list((cache_dir / "fashion_mnist").iterdir())) == 2 and preparing.splits is None

    def no_decoding(path):
        raise AssertionError(f"setup decoded {path}")

    monkeypatch.setattr(sources, "read_idx", no_decoding)
    loading = ImageDataModule("fashion_mnist", "/nonexistent", str(cache_dir))
    loading.setup("fit")
    assert len(loading.split("train")) == 540 and len(loading.split("test")) == 200


def test_dynamic_binarisation_fresh_in_training_fixed_in_evaluation(cache_dir):
    datamodule = fashion_mnist(cache_dir, binarize="dynamic", size=512)
    grey = datamodule.split("train").images[:256]
    batch = (grey, torch.zeros(256))
    evaluated = [datamodule.on_after_batch_transfer(batch, 0)[0] for _ in range(2)]
    datamodule.trainer = L.Trainer(logger=False)
    datamodule.trainer.training = True
    trained = [datamodule.on_after_batch_transfer(batch, 0)[0] for _ in range(2)]
    for images in (*evaluated, *trained):
        assert set(images.unique().tolist()) == {0.0, 1.0}
        assert images.mean().item() == pytest.approx(grey.float().mean().item() / 255, abs=0.01)
    assert torch.equal(*evaluated) and not torch.equal(*trained)


@pytest.mark.slow
def test_fashion_mnist_trains_50_steps(tmp_path, tiny_config, cache_dir):
    cfg = tiny_config(
        "data=fashion_mnist",
        "model=mlp",
        "model.network.hidden_dims=[400]",  # the MLP of pytorch/examples, not TINY's
        "model.latent_dim=20",
        f"data.cache_dir={cache_dir}",
        "data.size=null",
        "data.batch_size=64",
        "data.eval_batch_size=100",
        "trainer.max_epochs=-1",
        "+trainer.max_steps=50",
        "+trainer.limit_val_batches=2",
    )
    metrics = train(cfg)
    assert metrics["steps"] == 50 and math.isfinite(metrics["test/elbo"])
    events = read_tensorboard(tmp_path / "tensorboard")
    losses = [event.value for event in events.Scalars("train/loss")]
    assert len(losses) == 50
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])  # nats per image fell


def test_mnist_test_set_through_the_idx_reader():
    test = read_idx_split(MNIST_T10K, "test", 28, 1)  # the official gzipped IDX files
    assert test.images.shape == (10_000, 1, 28, 28) and test.images.dtype == torch.uint8
    assert torch.bincount(test.labels).tolist() == MNIST_TEST_COUNTS
    assert test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    resized = read_idx_split(MNIST_T10K, "test", 32, 3)
    assert resized.images.shape == (10_000, 3, 32, 32)
    assert torch.equal(resized.images[:, 0], resized.images[:, 2])  # grey copied to RGB


def write_digit_pngs(root: Path, per_class: int = 40) -> torch.Tensor:
    """Real MNIST digits 0, 1, 2 as PNGs of odd sizes, grey and RGB, one subfolder per digit."""
    test = read_idx_split(MNIST_T10K, "test", 28, 1)
    for digit in range(3):
        folder = root / f"digit_{digit}"
        folder.mkdir(parents=True)
        for i, image in enumerate(test.images[test.labels == digit][:per_class]):
            height, width = (37, 29) if i % 2 else (45, 61)
            image = F.resize(image, [height, width], antialias=True)
            if i % 3 == 0:
                image = image.expand(3, -1, -1).contiguous()
            write_png(image, str(folder / f"{i:03d}.png"))
    return test.images


@pytest.mark.slow
@pytest.mark.parametrize("in_memory", [True, False])
def test_folder_of_odd_sized_grey_and_rgb_pngs_trains(tmp_path, tiny_config, in_memory):
    write_digit_pngs(tmp_path / "images")
    overrides = [
        "data=folder",
        f"data.root={tmp_path / 'images'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"data.in_memory={in_memory}",
        "data.num_workers=0",
        "data.image_size=16",
        "data.channels=3",
        "data.size=null",
        "data.batch_size=16",
        "trainer.max_epochs=2",
    ]
    datamodule = instantiate(tiny_config(*overrides).data)
    datamodule.setup()
    sizes = {name: len(datamodule.split(name)) for name in ("train", "val", "test")}
    assert sizes == {"train": 97, "val": 11, "test": 12}  # 120 images, 10% test, 10% of the rest
    images, labels = datamodule.examples("train", 8)
    assert images.shape == (8, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    loaders = (datamodule.train_dataloader(), datamodule.val_dataloader())
    labels = torch.cat([batch_labels for loader in loaders for _, batch_labels in loader])
    assert len(labels) == 108 and set(labels.tolist()) == {0, 1, 2}  # a class per subfolder

    metrics = train(tiny_config(*overrides))
    assert metrics["steps"] == 2 * math.ceil(97 / 16) and math.isfinite(metrics["test/elbo"])
    cached = list((tmp_path / "cache").rglob("*.pt")) if in_memory else []
    assert len(cached) == int(in_memory)


def test_folder_without_subfolders_is_labelled_zero(tmp_path):
    write_digit_pngs(tmp_path / "images", per_class=4)
    for png in (tmp_path / "images").rglob("*.png"):
        png.rename(tmp_path / "images" / f"{png.parent.name}_{png.name}")
    datamodule = ImageDataModule(
        "folder",
        str(tmp_path / "images"),
        str(tmp_path / "cache"),
        image_size=28,
        channels=1,
        in_memory=False,
    )
    datamodule.setup()
    assert sum(len(datamodule.split(n)) for n in ("train", "val", "test")) == 12
    assert datamodule.examples("train", 10)[1].tolist() == [0] * 10


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mnist", "MNIST/raw"),
        ("kmnist", "KMNIST/raw"),
        ("cifar10", "cifar-10-batches-py"),
        ("celeba", "celeba"),
        ("folder", "a folder holding images"),
    ],
)
def test_missing_data_set_names_root_and_where(tmp_path, name, expected):
    datamodule = ImageDataModule(name, str(tmp_path / "none"), str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=f"data.root=.*{expected}") as error:
        datamodule.setup()
    assert "\n" not in str(error.value)
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_train_py_with_missing_mnist_exits_with_one_line(tmp_path):
    result = run_script(
        "train.py",
        "data=mnist",
        "data.root=/nonexistent",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 2
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "Traceback" not in result.stderr
    assert error[0].startswith("error: data.root='/nonexistent' is not allowed: no mnist files")
    assert "/nonexistent/MNIST/raw" in error[0] and "data.download=true" in error[0]
    assert not (tmp_path / "cache").exists()  # nothing half-written
