"""Files written whole or not at all: data caches and checkpoints."""

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def save_atomically(
    data: Any, path: Path, write: Callable[[Any, IO[bytes]], None] | None = None
) -> None:
    """`write(data, file)` (torch.save by default) into a temporary file beside `path` (the same
    file system), flushed to disk, then renamed over `path`: a reader sees the old file or the
    whole new one, and a crash or an error while writing (a full disk) leaves no half file under
    `path` (nor a temporary one, but after a kill).
    """
    put_in_place(write_beside(data, path, write), path)


def write_beside(
    data: Any, path: Path, write: Callable[[Any, IO[bytes]], None] | None = None
) -> Path:
    """The first half of `save_atomically`: `data` written whole into a new temporary file beside
    `path`, flushed and synced to disk; its path. An error while writing removes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of this writer's own ("x": created here, never another's), with the umask's mode
    partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with partial.open("xb") as file:
            (write or torch.save)(data, file)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return partial


def put_in_place(partial: Path, path: Path) -> None:
    """The second half: the file `write_beside` wrote renamed over `path` (atomic on one file
    system), the rename synced to disk too where the file system allows."""
    try:
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    try:  # not every file system lets a directory be synced
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        pass


def leftover_partials(folder: Path, name: str) -> list[Path]:
    """The temporary files that writers of `folder / name` killed before their rename left."""
    return sorted(Path(folder).glob(f".{name}.*.tmp"))
