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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of this writer's own ("x": created here, never another's), with the umask's mode
    partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with partial.open("xb") as file:
            (write or torch.save)(data, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    try:  # the rename itself on disk too; not every file system lets a directory be synced
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        pass
