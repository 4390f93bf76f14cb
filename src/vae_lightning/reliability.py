"""What keeps a run alive or resumable: stop on a signal with a checkpoint, continue a run in its
own directory with a history that has no gap, and stop (or skip) at a non-finite loss."""

import logging
import math
import random
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import IO, Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from tensorboard.compat.proto.event_pb2 import Event, SessionLog

from vae_lightning.errors import ConfigError, UserError
from vae_lightning.runs import last_checkpoint_path
from vae_lightning.storage import leftover_partials, put_in_place, write_beside

log = logging.getLogger(__name__)


class Interrupted(UserError):
    """SIGTERM or SIGINT stopped training after a checkpoint was saved."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        super().__init__(
            f"{signal.Signals(signum).name} at step {step}: checkpoint saved to {checkpoint}; "
            f"continue with: python train.py resume={checkpoint.parent.parent}"
        )
        self.exit_code = 128 + signum  # what a shell reports for a process ended by the signal


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite."""


class CheckpointNotWritten(UserError):
    """Writing a checkpoint failed (a full disk, a folder gone): the previous one is intact."""


class Resumable(L.Callback):
    """Makes a run resumable from its `last.ckpt` with the same steps and an unbroken history.

    - SIGTERM or Ctrl-C (SIGINT) during training: the current batch finishes, `last.ckpt` is
      saved at the same point of the loop as ModelCheckpoint saves it, the batch's metrics are
      logged and the run stops with `Interrupted`. A second signal stops at once.
    - On resume, TensorBoard is told to drop what earlier files logged from the checkpoint's step
      on (the steps the killed process ran past it), as SummaryWriter(purge_step=...) does.
    - Every checkpoint holds the random states training draws from (torch on the CPU and every
      CUDA device, NumPy, Python's random); a resumed run puts them back as training starts
      (after the sanity check, which draws too), so its steps draw what the killed run's would
      have. The order of the training batches is the data loader's own state
      (data/in_memory.py, IndexBatches), which Lightning's fit loop saves and restores.
    - No checkpoint is in place before what the run logs up to it is on disk. ModelCheckpoint
      saves before that: at `on_train_batch_end`, before Lightning logs the step's values, and
      at `on_train_epoch_end` (`on_validation_end` when validation runs within epochs), before
      it logs the epoch's. A kill in between would resume past values never logged. So during
      training every save is held (written and synced by AtomicCheckpointIO, not yet renamed
      into place, nor the files it supersedes removed) until the next point where all of it is
      out: a training step's start, a validation's start, an epoch's start, the end of
      training. There the loggers are flushed and the held saves put in place; a kill before
      that resumes from the checkpoint before.
    - Each epoch after the first starts from the random states its previous epoch's training
      batches ended with: what validation and epoch-end callbacks (pictures) draw does not
      reach training, so a run resumed from an epoch-end checkpoint, which runs neither again,
      draws as an uninterrupted one.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.saved: Path | None = None
        self.random_states: dict[str, Any] | None = None  # loaded, put back at on_train_start
        self.next_epoch_states: dict[str, Any] | None = None  # for the next epoch's start

    def state_dict(self) -> dict[str, Any]:
        return {"random_states": random_states(), "next_epoch_states": self.next_epoch_states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.random_states = state_dict.get("random_states")
        self.next_epoch_states = state_dict.get("next_epoch_states")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._at_safe_point(trainer)
        if self.next_epoch_states is not None:
            set_random_states(self.next_epoch_states)
            self.next_epoch_states = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # the second signal: stop now
        self.signum = signum
        log.warning("%s: stopping after this batch", signal.Signals(signum).name)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Replaces Lightning's SIGTERM handler (it saves nothing on one device, and ends the run
        # with exit status 0); Lightning puts back the handlers it found when fit ends.
        self.signum, self.saved = None, None
        if isinstance(io := trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            io.hold()
        if self.random_states is not None:
            set_random_states(self.random_states)
            self.random_states = None
        if threading.current_thread() is threading.main_thread():  # the only one that may
            for signum in self.SIGNALS:
                signal.signal(signum, self._on_signal)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self.next_epoch_states = random_states()  # ModelCheckpoint saves after this hook
        if self.signum is not None and self.saved is None:
            self.saved = (
                last_checkpoint_path(trainer) or Path(trainer.default_root_dir) / "last.ckpt"
            )
            trainer.save_checkpoint(self.saved, weights_only=False)  # all, to resume from

    def _at_safe_point(self, trainer: L.Trainer) -> None:
        """All that was logged and drawn before is out: put the held checkpoints in place once
        the loggers have written it, then stop if a signal asked to."""
        if isinstance(io := trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            if io.held:
                flush_loggers(trainer)
            io.release()
        if self.saved is not None:
            raise Interrupted(self.signum, trainer.global_step, self.saved)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx) -> None:
        self._at_safe_point(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._at_safe_point(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.saved is not None:  # held since the epoch's last step ended, with no validation
            self._at_safe_point(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._at_safe_point(trainer)
        if isinstance(io := trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            io.stop_holding()

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        # what a held save follows may never have been logged: the checkpoints stay as they were
        if isinstance(io := trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            io.discard()
            io.stop_holding()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        if trainer.state.fn != "fit" or not trainer.is_global_zero:
            return  # testing a checkpoint continues no history; only rank zero writes events
        step = checkpoint["global_step"]
        if (last := last_checkpoint_path(trainer)) is not None:
            for partial in leftover_partials(last.parent, "*.ckpt"):  # a killed process's saves
                partial.unlink(missing_ok=True)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                session_start = SessionLog(status=SessionLog.START)
                logger.experiment.file_writer.add_event(Event(step=step, session_log=session_start))


def flush_loggers(trainer: L.Trainer) -> None:
    """Every value logged so far written out (TensorBoard's writer thread queues its events)."""
    for logger in trainer.loggers:
        logger.save()


def random_states() -> dict[str, Any]:
    """The states of the global generators, as tensors and plain lists (so that a checkpoint
    still loads with torch.load(weights_only=True))."""
    kind, keys, pos, has_gauss, cached_gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached_gauss],
        "python": [version, list(internal), gauss_next],
    }


def set_random_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached_gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint whole or not at all: to a temporary file in the same folder, flushed
    and synced to disk, then renamed over the target (os.replace is atomic on one file system).
    A process killed, or a disk full, while it writes leaves the previous file as it was.

    Lightning's own save writes the target file in place, so a kill during the write leaves a
    truncated checkpoint.

    While holding (from `hold()` to `stop_holding()`), a checkpoint is written and synced as
    always, but renamed into place only at the next `release()`, and a file ModelCheckpoint
    removes (a top-k checkpoint superseded) is removed only then: the folder changes all at once.
    `discard()` drops what is held, and the folder stays as it was. Resumable holds the saves of
    training until what they follow has been logged (see there).
    """

    def __init__(self) -> None:
        super().__init__()
        self.holding = False
        self.held: dict[Path, Path] = {}  # target -> its written temporary file
        self.removals: list[Path] = []

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        try:
            partial = write_beside(checkpoint, path, self._write)
            if not self.holding:
                put_in_place(partial, path)
                return
        except OSError as error:
            kept = f"the previous {path.name} is intact" if path.is_file() else "none was before"
            raise CheckpointNotWritten(
                f"could not write the checkpoint {path} ({error.strerror or error}): {kept}; "
                f"make room and continue with: python train.py resume={path.parent.parent}"
            ) from error
        self._drop_held(path)
        self.held[path] = partial

    def _write(self, checkpoint: dict[str, Any], file: IO[bytes]) -> None:
        torch.save(checkpoint, file)

    def remove_checkpoint(self, path: str | Path) -> None:
        if not self.holding:
            super().remove_checkpoint(path)
            return
        self._drop_held(Path(path))
        self.removals.append(Path(path))

    def _drop_held(self, path: Path) -> None:
        if (partial := self.held.pop(path, None)) is not None:
            partial.unlink(missing_ok=True)

    def hold(self) -> None:
        self.holding = True

    def release(self) -> None:
        if not (self.held or self.removals):
            return  # the common case: at every training step's start
        held, self.held = self.held, {}
        removals, self.removals = self.removals, []
        for path, partial in held.items():  # the new files first: a kill between keeps both
            put_in_place(partial, path)
        for path in removals:
            if path not in held:
                super().remove_checkpoint(path)

    def discard(self) -> None:
        for path in list(self.held):
            self._drop_held(path)
        self.removals = []

    def stop_holding(self) -> None:
        self.release()
        self.holding = False


class NonFiniteGuard(L.Callback):
    """Stops (or skips a batch) at a NaN or infinite training loss.

    `on_nonfinite=stop` (the default) ends the run with `NonFiniteLoss` naming the first step
    whose loss was not finite, and no checkpoint holds a state trained on it: `last.ckpt` is the
    last good state. It reads no loss on the host at the steps themselves: each step's loss is
    kept, detached, on its device (no sync), and the kept losses are read back together only
    where it matters: before any checkpoint is written (`on_save_checkpoint`: every save,
    whoever makes it), every `every_n_steps` steps, before validation and at the ends of epochs
    and of training. The weights between a non-finite step and that check are
    discarded with the run. A per-step read would make the host wait for the device each step,
    so that the next step's Python cannot overlap the current step's kernels.

    `skip` logs a warning and drops the step's gradients, so the optimiser leaves the weights (and
    its moments) as they were. Whether the optimiser steps at all is decided on the host, so this
    mode reads each step's loss (one host sync per step, the price of an exact skip): deciding on
    the device instead would mean copying the weights and the optimiser's moments at every step,
    to put them back with torch.where after a bad one.
    """

    def __init__(self, on_nonfinite: str = "stop", every_n_steps: int | None = None):
        if on_nonfinite not in ("stop", "skip"):
            raise ConfigError("callbacks.nonfinite.on_nonfinite", on_nonfinite, "stop or skip")
        self.on_nonfinite = on_nonfinite
        # None: the Trainer's log_every_n_steps, the steps at which the loggers read values back
        # from the device anyway
        self.every_n_steps = every_n_steps
        self.skip = False
        self.skipped = 0
        self.losses: list[torch.Tensor] = []  # the unchecked steps' losses, on their device
        self.where: list[tuple[int, int, int]] = []  # (step, epoch, batch) of each of them

    def _window(self, trainer: L.Trainer) -> int:
        return self.every_n_steps or max(1, trainer.log_every_n_steps)

    def _where(self, trainer: L.Trainer) -> tuple[int, int, int]:
        batch = trainer.fit_loop.epoch_loop.batch_idx
        return trainer.global_step, trainer.current_epoch, batch

    def _stop(self, trainer: L.Trainer, loss: float, step: int, epoch: int, batch: int):
        last = last_checkpoint_path(trainer)
        kept = f"last good checkpoint: {last}" if last and last.is_file() else "no checkpoint"
        raise NonFiniteLoss(
            f"train/loss={loss} at step {step} (epoch {epoch}, batch {batch}): training "
            f"stopped, {kept}; try a lower model.optimizer.lr, "
            "or callbacks.nonfinite.on_nonfinite=skip"
        )

    def on_before_backward(self, trainer: L.Trainer, pl_module, loss: torch.Tensor) -> None:
        if self.on_nonfinite == "skip":
            self.skip = not math.isfinite(loss.item())
            if self.skip:
                step, epoch, batch = self._where(trainer)
                self.skipped += 1
                log.warning(
                    "train/loss=%s at step %d (epoch %d, batch %d): batch skipped (%d so far)",
                    loss.item(),
                    step,
                    epoch,
                    batch,
                    self.skipped,
                )
            return
        self.losses.append(loss.detach())
        self.where.append(self._where(trainer))
        if len(self.losses) >= self._window(trainer):  # batches that did not step (accumulation)
            self.check(trainer)

    def check(self, trainer: L.Trainer) -> None:
        """Read the buffered losses back (one host sync); stop at the first non-finite one."""
        if not self.losses:
            return
        losses = torch.stack(self.losses).float().cpu()
        where, self.where, self.losses = self.where, [], []
        finite = torch.isfinite(losses)
        if not finite.all():
            first = int((~finite).int().argmax())
            self._stop(trainer, losses[first].item(), *where[first])

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module, optimizer) -> None:
        if self.skip:
            optimizer.zero_grad(set_to_none=True)  # optimisers leave parameters without grads

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % self._window(trainer) == 0:
            self.check(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        # Before the file is written: raising here leaves the previous checkpoint as it was.
        self.check(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)
