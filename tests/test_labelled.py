"""Semi-supervised data (data.labelled): a balanced subset of the training labels fixed by the
data's seed, the rest -1, labelled and unlabelled images mixed in every batch, resumably; and the
class names of the labelled sets, with a user's label (index or name) as a class index."""

from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from tests.helpers import FASHION_MNIST_SUBSET, run_script
from tests.test_data_real import write_digit_pngs
from vae_lightning.data import ImageDataModule, ShapesDataModule
from vae_lightning.data.classes import class_index
from vae_lightning.errors import ConfigError

FASHION_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def shapes(**options) -> ShapesDataModule:
    datamodule = ShapesDataModule(**{"size": 300, "image_size": 8, "batch_size": 16} | options)
    datamodule.setup()
    return datamodule


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def fashion_mnist(cache_dir: Path, **options) -> ImageDataModule:
    datamodule = ImageDataModule(
        "fashion_mnist", str(FASHION_MNIST_SUBSET), str(cache_dir), **options
    )
    datamodule.setup()
    return datamodule


def test_the_labelled_subset_is_balanced_the_same_for_a_seed_and_hides_only_the_class(cache_dir):
    every = fashion_mnist(cache_dir)
    some = fashion_mnist(cache_dir, labelled=20)
    train = some.split("train")
    assert torch.equal(train.images, every.split("train").images)
    kept = train.labels >= 0
    assert torch.equal(train.labels[kept], every.split("train").labels[kept])
    assert (train.labels[~kept] == -1).all() and kept.sum() == 20
    assert torch.bincount(train.labels[kept], minlength=10).tolist() == [2] * 10
    for name in ("val", "test"):  # every label kept, for the accuracy of q(y|x)
        assert torch.equal(some.split(name).labels, every.split(name).labels)
    assert torch.equal(fashion_mnist(cache_dir, labelled=20).split("train").labels, train.labels)
    other = fashion_mnist(cache_dir, labelled=20, seed=1).split("train")
    assert ((other.labels >= 0).sum()) == 20
    assert labelled_images(other) != labelled_images(train)


def labelled_images(split) -> set[bytes]:
    return set(map(bytes, split.images[split.labels >= 0].flatten(1).numpy()))


def test_shapes_hide_the_shape_and_spread_a_remainder_over_the_first_shapes():
    every, some = shapes(), shapes(labelled=31)
    labels, all_labels = some.split("train").labels, every.split("train").labels
    kept = labels[:, 0] >= 0
    assert torch.bincount(labels[kept, 0], minlength=3).tolist() == [11, 10, 10]
    assert (labels[~kept, 0] == -1).all()
    assert torch.equal(labels[:, 1:], all_labels[:, 1:])  # the other factors stay known


def test_every_batch_mixes_labelled_and_unlabelled_images_and_an_epoch_sees_each_unlabelled_once():
    datamodule = shapes(labelled=30)
    train = datamodule.split("train")  # 240 images: 30 labelled, 210 not
    loader = datamodule.train_dataloader()
    # each batch of 16: its share of labelled ones (30/240 of 16 = 2) and 14 unlabelled
    assert len(loader) == 15
    seen = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == 15
        for _, labels in batches:
            assert (labels[:2, 0] >= 0).all() and (labels[2:, 0] == -1).all()
        unlabelled = torch.cat([images[2:] for images, _ in batches])
        hidden = train.images[train.labels[:, 0] == -1]
        assert sorted(map(bytes, unlabelled.flatten(1).numpy())) == sorted(
            map(bytes, hidden.flatten(1).numpy())
        )
        seen.append(torch.cat([images for images, _ in batches]))
    assert not torch.equal(seen[0], seen[1])  # each epoch is drawn anew


def batches_of(loader, epoch: int) -> list[torch.Tensor]:
    loader.sampler.set_epoch(epoch)
    return [labels for _, labels in loader]


def test_the_mixed_batches_resume_where_they_stopped(tmp_path):
    """Lightning's protocol: the loader's state_dict in a checkpoint, load_state_dict into the
    fresh loader of a resumed run, which then hands out the rest of the epoch and the next."""
    torch.manual_seed(3)
    uninterrupted = shapes(labelled=30).train_dataloader()
    expected = [torch.cat(batches_of(uninterrupted, epoch)) for epoch in range(2)]
    torch.manual_seed(3)
    interrupted = shapes(labelled=30).train_dataloader()
    first = []
    for _, labels in interrupted:
        first.append(labels)
        if len(first) == 4:
            break
    torch.save(interrupted.state_dict(), tmp_path / "state.pt")
    torch.manual_seed(99)  # a resumed run's own seed must not matter
    resumed = shapes(labelled=30).train_dataloader()
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    rest = batches_of(resumed, 0)
    assert len(rest) == 11
    assert torch.equal(torch.cat(first + rest), expected[0])
    assert torch.equal(torch.cat(batches_of(resumed, 1)), expected[1])


@pytest.mark.parametrize(
    ("labelled", "reason"),
    [(2, "at least one label per class (3)"), (241, "at most the 240 training images")],
)
def test_too_few_or_too_many_labels_are_refused_where_the_data_is_built(labelled, reason):
    with pytest.raises(ConfigError, match=r"data\.labelled") as error:
        shapes(labelled=labelled)
    assert reason in str(error.value)


def test_a_class_with_too_few_images_and_a_set_without_classes_are_refused(tmp_path):
    write_digit_pngs(tmp_path / "digits", per_class=4)
    for extra in sorted((tmp_path / "digits/digit_2").iterdir())[1:]:
        extra.unlink()
    folder = ImageDataModule(
        "folder",
        str(tmp_path / "digits"),
        str(tmp_path / "cache"),
        image_size=8,
        val_fraction=0,
        test_fraction=0,
        labelled=6,
    )
    assert folder.class_names == ("digit_0", "digit_1", "digit_2")
    with pytest.raises(ConfigError, match="class digit_2 has only 1 training images, not the 2"):
        folder.setup()
    (tmp_path / "flat").mkdir()
    for i in range(12):
        write_png(torch.full((1, 8, 8), 20 * i, dtype=torch.uint8), str(tmp_path / f"flat/{i}.png"))
    flat = ImageDataModule("folder", str(tmp_path / "flat"), str(tmp_path / "cache"), labelled=3)
    assert flat.class_names is None
    assert ImageDataModule("celeba", str(tmp_path), str(tmp_path / "cache")).class_names is None
    with pytest.raises(ConfigError, match="these images have no classes"):
        flat.setup()


def test_a_labelled_folder_decoded_image_by_image_hides_the_same_labels(tmp_path):
    write_digit_pngs(tmp_path / "digits", per_class=10)
    options = {"image_size": 8, "val_fraction": 0, "labelled": 6, "batch_size": 8}
    in_memory, by_item = (
        ImageDataModule(
            "folder", str(tmp_path / "digits"), str(tmp_path / "cache"), in_memory=flag, **options
        )
        for flag in (True, False)
    )
    in_memory.setup()
    by_item.prepare_data()
    by_item.setup()
    labels = in_memory.split("train").labels
    assert torch.bincount(labels[labels >= 0]).tolist() == [2, 2, 2]
    items = by_item.split("train")
    assert [int(items[i][1]) for i in range(len(items))] == labels.tolist()


def test_a_bad_labelled_value_and_too_few_labels_stop_train_py_in_one_line(tmp_path):
    for value in ("0", "2"):
        result = run_script(
            "train.py",
            "data.size=300",
            f"data.labelled={value}",
            f"hydra.run.dir={tmp_path / value}",
        )
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
        assert (
            errors[0].startswith(f"error: data.labelled={value} is not allowed")
            and "Traceback" not in result.stderr
        )
        assert not (tmp_path / value).exists()  # nothing written


def test_the_labelled_sets_know_their_class_names(cache_dir, tmp_path):
    assert fashion_mnist(cache_dir).class_names == FASHION_NAMES
    assert ImageDataModule("mnist", ".", ".").class_names == tuple("0123456789")
    assert ShapesDataModule().class_names == ("square", "ellipse", "heart")


@pytest.mark.parametrize(
    ("label", "index"),
    [
        (3, 3),
        ("sneaker", 7),
        ("Sneaker", 7),
        ("ankle_boot", 9),
        ("ANKLE BOOT", 9),
        ("t-shirt", None),
    ]
    + [
        ("t_shirt_top", 0),
        ("T-shirt/top", 0),
        (10, None),
        (-1, None),
        (True, None),
        ("boot", None),
    ],
)
def test_a_label_by_index_or_by_name_any_case_and_an_unknown_one_refused(label, index):
    if index is not None:
        assert class_index(label, FASHION_NAMES) == index
        return
    with pytest.raises(ConfigError) as error:
        class_index(label, FASHION_NAMES)
    message = str(error.value)
    assert "\n" not in message and message.startswith("label")
    assert "0..9" in message and "Ankle boot" in message and "T-shirt/top" in message
