"""What keeps a run alive or resumable: stop on a signal with a checkpoint, continue a run in its
own directory with a history that has no gap, and stop (or skip) at a non-finite loss."""

import logging
import math
import signal
import threading
from pathlib import Path
from types import FrameType

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.proto.event_pb2 import Event, SessionLog

from vae_lightning.errors import ConfigError, UserError
from vae_lightning.runs import last_checkpoint_path

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


class Resumable(L.Callback):
    """Makes a run resumable from its `last.ckpt` with the same steps and an unbroken history.

    - SIGTERM or Ctrl-C (SIGINT) during training: the current batch finishes, `last.ckpt` is
      saved at the same point of the loop as ModelCheckpoint saves it, the batch's metrics are
      logged and the run stops with `Interrupted`. A second signal stops at once.
    - On resume, TensorBoard is told to drop what earlier files logged from the checkpoint's step
      on (the steps the killed process ran past it), as SummaryWriter(purge_step=...) does.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.saved: Path | None = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # the second signal: stop now
        self.signum = signum
        log.warning("%s: stopping after this batch", signal.Signals(signum).name)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Replaces Lightning's SIGTERM handler (it saves nothing on one device, and ends the run
        # with exit status 0); Lightning puts back the handlers it found when fit ends.
        self.signum, self.saved = None, None
        if threading.current_thread() is threading.main_thread():  # the only one that may
            for signum in self.SIGNALS:
                signal.signal(signum, self._on_signal)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.signum is not None and self.saved is None:
            self.saved = (
                last_checkpoint_path(trainer) or Path(trainer.default_root_dir) / "last.ckpt"
            )
            trainer.save_checkpoint(self.saved)

    def _at_safe_point(self, trainer: L.Trainer) -> None:
        """Stop once the saved batch's metrics are logged (Lightning flushes loggers as it logs)."""
        if self.saved is not None:
            raise Interrupted(self.signum, trainer.global_step, self.saved)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx) -> None:
        self._at_safe_point(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._at_safe_point(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._at_safe_point(trainer)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        if trainer.state.fn != "fit":
            return  # testing a checkpoint continues no history
        step = checkpoint["global_step"]
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                session_start = SessionLog(status=SessionLog.START)
                logger.experiment.file_writer.add_event(Event(step=step, session_log=session_start))


class NonFiniteGuard(L.Callback):
    """Checks the training loss of every step before its backward pass.

    `on_nonfinite=stop` ends the run with `NonFiniteLoss` naming the step; no gradient of that
    step is applied and no checkpoint is written after it, so `last.ckpt` is the last good state.
    `skip` logs a warning and drops the step's gradients, so the optimiser leaves the weights
    (and its moments) as they were.

    The check costs one host sync per step (reading the loss). Checking only at logging
    cadence would avoid it, but by then the optimiser would have applied NaN gradients and a
    step checkpoint could hold them.
    """

    def __init__(self, on_nonfinite: str = "stop"):
        if on_nonfinite not in ("stop", "skip"):
            raise ConfigError("callbacks.nonfinite.on_nonfinite", on_nonfinite, "stop or skip")
        self.on_nonfinite = on_nonfinite
        self.skip = False
        self.skipped = 0

    def on_before_backward(self, trainer: L.Trainer, pl_module, loss: torch.Tensor) -> None:
        self.skip = not math.isfinite(loss.item())  # torch.isfinite would add an op per step
        if not self.skip:
            return
        where = (
            f"train/loss={loss.item()} at step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}, batch {trainer.fit_loop.epoch_loop.batch_idx})"
        )
        if self.on_nonfinite == "stop":
            last = last_checkpoint_path(trainer)
            kept = f"last good checkpoint: {last}" if last and last.is_file() else "no checkpoint"
            raise NonFiniteLoss(
                f"{where}: training stopped, {kept}; try a lower model.optimizer.lr, "
                "or callbacks.nonfinite.on_nonfinite=skip"
            )
        self.skipped += 1
        log.warning("%s: batch skipped (%d so far)", where, self.skipped)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module, optimizer) -> None:
        if self.skip:
            optimizer.zero_grad(set_to_none=True)  # optimisers leave parameters without grads
