"""Cache files of a set's uint8 images and their labels, for the data sets that build them once
(decoded image sets, rendered shapes) and load them at later runs.

A cache file is written whole or not at all (save_atomically), with a checksum, and checked
when it is loaded: one that does not load, or does not hold what its name says (keys, shapes,
dtypes, checksum), is reported with one warning and rebuilt by its caller, never used.
"""

import logging
import zlib
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch

from vae_lightning.data.in_memory import InMemoryImages
from vae_lightning.storage import save_atomically

log = logging.getLogger(__name__)


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def checksum(data: dict[str, torch.Tensor]) -> int:
    """CRC-32 of the bytes of the cached tensors: a damaged byte inside them is found on load."""
    crc = 0
    for key in ("images", "labels"):
        crc = zlib.crc32(data[key].contiguous().view(-1).view(torch.uint8).numpy(), crc)
    return crc


def save_images(path: Path, images: InMemoryImages, **extra: Any) -> None:
    """Write the images and labels, their checksum and `extra` entries as the cache file `path`."""
    data = {"images": images.images, "labels": images.labels}
    save_atomically(data | {"crc32": checksum(data)} | extra, path)


def images_problem(
    data: Any, image_shape: tuple[int, int, int], extra: Collection[str] = ()
) -> str | None:
    """What is wrong with the contents of an images cache file, or None: the keys (the `extra`
    ones allowed too), a uint8 tensor of (N, C, H, W) images of `image_shape`, N int64 labels,
    and their checksum."""
    if not isinstance(data, dict):
        return f"a {type(data).__name__}, not a dict"
    # caches written before the checksum have only images and labels: checked for the rest
    allowed = {"images", "labels", "crc32", *extra}
    if not {"images", "labels"} <= set(data) <= allowed:
        return f"keys {sorted(map(str, data))}, not {', '.join(sorted(allowed))}"
    images, labels = data["images"], data["labels"]
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        return "images or labels not a tensor"
    if images.dtype != torch.uint8 or images.ndim != 4:
        return f"images {images.dtype} of shape {tuple(images.shape)}, not uint8 (N, C, H, W)"
    if tuple(images.shape[1:]) != tuple(image_shape):
        return f"images of shape {tuple(images.shape[1:])}, not {tuple(image_shape)}"
    if labels.dtype != torch.int64 or labels.ndim < 1 or len(labels) != len(images):
        return f"labels {labels.dtype} {tuple(labels.shape)} for {len(images)} int64 ones"
    if "crc32" in data and data["crc32"] != checksum(data):
        return "its checksum does not match its images and labels"
    return None


def load_checked(path: Path, problem: Callable[[Any], str | None]) -> Any | None:
    """The contents of a file of save_atomically; None when there is none, or when it is damaged:
    torch.load fails or `problem(contents)` names what is wrong; then with one warning."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, weights_only=True)
    except Exception as error:  # a damaged file fails in many ways: any failure is damage
        wrong = f"it does not load: {type(error).__name__}: {error}"
    else:
        wrong = problem(data)
        if wrong is None:
            return data
    log.warning("cache file %s is damaged (%s): rebuilding it", path, one_line(wrong))
    return None
