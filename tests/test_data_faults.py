"""Faults in the data on disk: unreadable files in an image folder, damaged cache files, a cache
write that fails midway."""

import json
import logging
import math
import os
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY, run_script
from tests.test_data_real import write_digit_pngs
from vae_lightning.data import ImageDataModule, ShapesDataModule, sources
from vae_lightning.data.cache import load_checked
from vae_lightning.data.images import decode_all
from vae_lightning.data.sources import UnreadableImage
from vae_lightning.errors import ConfigError, UnreadableImageError
from vae_lightning.storage import save_atomically


def truncated_png(good: Path, path: Path) -> Path:
    """The first half of a good PNG: the decoder runs out of data."""
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def corrupt_png(good: Path, path: Path) -> Path:
    """A good PNG with one byte of its second chunk's type changed (libpng, under torchvision.io,
    would write its own line to stderr about it)."""
    data = bytearray(good.read_bytes())
    data[40] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def folder_with_a_broken_file(root: Path, make_broken=truncated_png, per_class: int = 10) -> Path:
    """3 * per_class real digit PNGs in a subfolder per digit, plus digit_1/broken.png."""
    write_digit_pngs(root, per_class=per_class)
    return make_broken(root / "digit_1" / "000.png", root / "digit_1" / "broken.png")


def folder_module(root: Path, cache: Path, **options) -> ImageDataModule:
    options = {"image_size": 16, "channels": 1, "num_workers": 0} | options
    return ImageDataModule("folder", str(root), str(cache), **options)


def cache_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def warnings_about(caplog, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and text in r.getMessage()
    ]


# ---- unreadable files in an image folder ----------------------------------------------------


def train_on_folder(tmp_path: Path, *overrides: str):
    return run_script(
        "train.py",
        *TINY,
        "data=folder",
        f"data.root={tmp_path / 'images'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.image_size=16",
        "data.channels=1",
        "data.size=null",
        "data.batch_size=16",
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path / 'run'}",
        *overrides,
    )


@pytest.mark.slow
def test_train_py_leaves_out_an_unreadable_png_with_one_warning(tmp_path):
    # 90 good images: 9 test, 8 val, 73 train
    broken = folder_with_a_broken_file(tmp_path / "images", per_class=30)
    result = train_on_folder(tmp_path)  # folder.yaml's defaults: unreadable=skip, 2 workers
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "libpng" not in result.stderr
    log_lines = (tmp_path / "run" / "train.log").read_text().splitlines()
    named = [line for line in log_lines if str(broken) in line]
    assert len(named) == 1 and "[WARNING]" in named[0]
    assert "1 of 91 image files cannot be read" in named[0]
    assert "data.unreadable=skip" in named[0]
    # the model was trained on the 90 good images, and the cache holds just them
    (cache,) = cache_files(tmp_path / "cache")
    cached = torch.load(cache, weights_only=True)
    assert cached["images"].shape == (90, 1, 16, 16)
    assert len(cached["unreadable"]) == 1 and cached["unreadable"][0].startswith(f"{broken} (")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == math.ceil(73 / 16)  # 90: 9 test, 8 val, 73 train, batches of 16


@pytest.mark.slow
def test_train_py_with_unreadable_stop_exits_with_one_line_and_no_cache(tmp_path):
    broken = folder_with_a_broken_file(tmp_path / "images", corrupt_png)
    result = train_on_folder(tmp_path, "data.unreadable=stop")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    named = [line for line in result.stderr.splitlines() if str(broken) in line]
    assert len(named) == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert named[0].startswith(f"error: cannot read the image file {broken} (")
    assert named[0].endswith("or set data.unreadable=skip to leave unreadable files out")
    assert cache_files(tmp_path / "cache") == []  # nothing half-written, no temporary file


def test_a_broken_file_is_unreadable_with_its_reason_and_nothing_on_stderr(tmp_path, capfd):
    write_digit_pngs(tmp_path, per_class=1)
    good = tmp_path / "digit_0" / "000.png"
    for broken in (corrupt_png(good, tmp_path / "a.png"), truncated_png(good, tmp_path / "b.png")):
        with pytest.raises(UnreadableImage) as error:
            sources.read_image(broken, 1)
        assert error.value.path == broken and error.value.reason
    (tmp_path / "c.png").write_bytes(b"not an image")
    with pytest.raises(UnreadableImage):
        sources.read_image(tmp_path / "c.png", 3)
    assert sources.read_image(good, 3).shape[0] == 3
    assert capfd.readouterr().err == ""


def test_skipping_happens_before_the_split_the_same_in_memory_or_not(tmp_path, caplog, monkeypatch):
    broken = folder_with_a_broken_file(tmp_path / "images", per_class=6)
    caplog.set_level(logging.INFO)
    in_memory = folder_module(tmp_path / "images", tmp_path / "cache")
    in_memory.prepare_data()
    in_memory.setup()
    per_file = folder_module(tmp_path / "images", tmp_path / "cache", in_memory=False)
    per_file.prepare_data()
    per_file.setup()
    # one warning per decode of the folder: when the cache and the list of readable files
    # were built, none when they were loaded
    assert len(warnings_about(caplog, str(broken))) == 2
    sizes = {name: len(in_memory.split(name)) for name in ("train", "val", "test")}
    assert sizes == {"train": 14, "val": 2, "test": 2}  # 18 readable: 10% test, 10% of the rest
    for name in ("train", "val", "test"):
        split = per_file.split(name)
        decoded = torch.stack([split[i][0] for i in range(len(split))])
        assert torch.equal(decoded, in_memory.split(name).images)

    caplog.clear()

    def no_decoding(path, channels):
        raise AssertionError(f"decoded {path} again")

    with monkeypatch.context() as patch:
        patch.setattr(sources, "read_image", no_decoding)
        again = folder_module(tmp_path / "images", tmp_path / "cache", in_memory=False)
        again.prepare_data()
        again.setup()  # the readable files are read back, not found again
        assert len(again.split("train")) == 14 and not warnings_about(caplog, str(broken))

    for in_memory_option in (True, False):  # stop means stop, whatever was cached with skip
        stopping = folder_module(
            tmp_path / "images", tmp_path / "cache", in_memory=in_memory_option, unreadable="stop"
        )
        with pytest.raises(UnreadableImageError, match=f"cannot read the image file {broken}"):
            stopping.setup()


def test_a_folder_of_nothing_readable_and_a_bad_option_are_one_line_errors(tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(3):
        (tmp_path / "images" / f"{i}.png").write_bytes(os.urandom(100))
    with pytest.raises(UnreadableImageError, match="none of the 3 image files can be read"):
        folder_module(tmp_path / "images", tmp_path / "cache").setup()
    assert cache_files(tmp_path / "cache") == []
    with pytest.raises(ConfigError, match="data.unreadable='ignore' is not allowed: skip or stop"):
        folder_module(tmp_path / "images", tmp_path / "cache", unreadable="ignore")


# ---- damaged cache files ----------------------------------------------------------------------


def flip_a_pixel_byte(path: Path, cached: dict) -> None:
    """One byte inside the stored pixels changed: torch.load reads it without complaint."""
    data = bytearray(path.read_bytes())
    pixels = cached["images"].numpy().tobytes()
    middle = pixels[len(pixels) // 2 : len(pixels) // 2 + 512]
    assert data.count(middle) == 1
    data[data.find(middle)] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGES = {
    "truncated": lambda path, cached: path.write_bytes(path.read_bytes()[:1000]),
    "empty": lambda path, cached: path.write_bytes(b""),
    "garbage": lambda path, cached: path.write_bytes(os.urandom(5000)),
    "a flipped byte": flip_a_pixel_byte,
    "other shape": lambda path, cached: torch.save(
        {"images": cached["images"][:, :, :8], "labels": cached["labels"]}, path
    ),
    "other dtype": lambda path, cached: torch.save(
        {"images": cached["images"].float(), "labels": cached["labels"]}, path
    ),
    "a missing key": lambda path, cached: torch.save({"images": cached["images"]}, path),
    "too few labels": lambda path, cached: torch.save(
        {"images": cached["images"], "labels": cached["labels"][:-1]}, path
    ),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_cache_is_rebuilt_with_one_warning(tmp_path, caplog, damage):
    write_digit_pngs(tmp_path / "images", per_class=4)
    first = folder_module(tmp_path / "images", tmp_path / "cache")
    first.setup()
    (path,) = cache_files(tmp_path / "cache")
    cached = torch.load(path, weights_only=True)
    DAMAGES[damage](path, cached)

    caplog.set_level(logging.INFO)
    second = folder_module(tmp_path / "images", tmp_path / "cache")
    second.setup()
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and warned[0].startswith(f"cache file {path} is damaged (")
    assert warned[0].endswith("): rebuilding it")
    for name in ("train", "val", "test"):
        assert torch.equal(second.split(name).images, first.split(name).images)
    fresh = decode_all(second.find().open("all"), 0)
    rebuilt = torch.load(path, weights_only=True)
    assert second.cache_problem(rebuilt) is None
    assert torch.equal(rebuilt["images"], fresh.images)
    assert torch.equal(rebuilt["labels"], fresh.labels)


# The shapes' pixels repeat from image to image: no bytes of them are unique enough to flip.
SHAPES_DAMAGES = {name: damage for name, damage in DAMAGES.items() if name != "a flipped byte"}
SHAPES_DAMAGES["another size"] = lambda path, cached: torch.save(
    {"images": cached["images"][:-1], "labels": cached["labels"][:-1]}, path
)


@pytest.mark.parametrize("damage", SHAPES_DAMAGES)
def test_a_damaged_shapes_cache_is_rebuilt_with_one_warning(tmp_path, caplog, damage):
    ShapesDataModule(size=300, cache_dir=str(tmp_path / "cache")).prepare_data()
    (path,) = cache_files(tmp_path / "cache")
    SHAPES_DAMAGES[damage](path, torch.load(path, weights_only=True))

    caplog.set_level(logging.INFO)
    second = ShapesDataModule(size=300, cache_dir=str(tmp_path / "cache"))
    second.prepare_data()  # the file is there: prepare_data leaves it, setup finds the damage
    second.setup()
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and warned[0].startswith(f"cache file {path} is damaged (")
    fresh = ShapesDataModule(size=300)  # no cache: rendered now
    for name in ("train", "val", "test"):
        assert torch.equal(second.split(name).images, fresh.split(name).images)
        assert torch.equal(second.split(name).labels, fresh.split(name).labels)
    assert second.cache_problem(torch.load(path, weights_only=True)) is None
    caplog.clear()
    ShapesDataModule(size=300, cache_dir=str(tmp_path / "cache")).setup()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_cache_of_before_the_checksum_is_still_used(tmp_path, caplog):
    write_digit_pngs(tmp_path / "images", per_class=4)
    first = folder_module(tmp_path / "images", tmp_path / "cache")
    first.prepare_data()
    (path,) = cache_files(tmp_path / "cache")
    cached = torch.load(path, weights_only=True)
    torch.save({"images": cached["images"], "labels": cached["labels"]}, path)
    second = folder_module(tmp_path / "images", tmp_path / "cache")
    second.setup()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert set(torch.load(path, weights_only=True)) == {"images", "labels"}  # not rewritten


# ---- a cache write that fails ----------------------------------------------------------------


def failing_save(real_save):
    """torch.save that writes a part of the file, then fails (a full disk, say)."""

    def save(data, file):
        real_save(data, file)
        file.truncate(file.tell() // 2)
        raise OSError(28, "No space left on device")

    return save


def test_a_failed_cache_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "set" / "all-1x4x4-abc.pt"
    data = {"images": torch.zeros(3, 1, 4, 4, dtype=torch.uint8), "labels": torch.arange(3)}
    monkeypatch.setattr(torch, "save", failing_save(torch.save))
    with pytest.raises(OSError, match="No space left"):
        save_atomically(data, path)
    assert cache_files(tmp_path / "cache") == []

    monkeypatch.undo()
    save_atomically(data, path)  # a good file, then a rewrite that fails: the good one stays
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", failing_save(torch.save))
    with pytest.raises(OSError, match="No space left"):
        save_atomically({"images": data["images"] + 1, "labels": data["labels"]}, path)
    assert path.read_bytes() == before and cache_files(tmp_path / "cache") == [path]


def test_a_cache_file_is_on_disk_before_it_gets_its_name(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(
        os, "replace", lambda a, b: calls.append(("replace", Path(a).parent)) or real_replace(a, b)
    )
    path = tmp_path / "cache" / "file.pt"
    save_atomically({"labels": torch.arange(3)}, path)
    assert calls[0] == "fsync" and calls[1] == ("replace", path.parent)  # same folder
    assert torch.equal(torch.load(path, weights_only=True)["labels"], torch.arange(3))
    assert (path.stat().st_mode & 0o777) == 0o666 & ~current_umask()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_build_that_fails_midway_leaves_no_cache_and_the_next_run_builds_it(
    tmp_path, monkeypatch
):
    write_digit_pngs(tmp_path / "images", per_class=4)
    monkeypatch.setattr(torch, "save", failing_save(torch.save))
    with pytest.raises(OSError):
        folder_module(tmp_path / "images", tmp_path / "cache").prepare_data()
    assert cache_files(tmp_path / "cache") == []
    monkeypatch.undo()
    datamodule = folder_module(tmp_path / "images", tmp_path / "cache")
    datamodule.setup()
    assert sum(len(datamodule.split(n)) for n in ("train", "val", "test")) == 12
    assert load_checked(cache_files(tmp_path / "cache")[0], datamodule.cache_problem)
