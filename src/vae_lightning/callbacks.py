"""Callbacks: the pictures of what the model learned at the ends of epochs (drawn by drawing.py),
the helpers that hand pictures, hyperparameters and final metrics to the loggers, and the console
output.

Every picture goes one way, `publish`: each logger's own image API and a PNG under
`<run dir>/images/`.
"""

import logging
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ProgressBar, RichModelSummary, RichProgressBar
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import save_image

from vae_lightning.drawing import (
    interpolation_grid,
    kl_figure,
    latent_map_figure,
    reconstruction_grid,
    rendered,
    sample_grid,
    traversal_grid,
)
from vae_lightning.file_only import FILE_ONLY

log = logging.getLogger(__name__)

# --- logging -------------------------------------------------------------------------------------


def log_image(trainer: L.Trainer, tag: str, image: torch.Tensor) -> None:
    """Send a (C, H, W) image in [0, 1] to every logger that takes images, through its own API."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, global_step=trainer.global_step)
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[image], step=trainer.global_step)


def publish(trainer: L.Trainer, name: str, image: torch.Tensor, epoch: int) -> None:
    """Log as `images/<name>` and save as `<run dir>/images/<name>_epoch_NNN.png` (no '=' in the
    name: Hydra's command line would read it as an assignment)."""
    log_image(trainer, f"images/{name}", image)
    out_dir = Path(trainer.default_root_dir) / "images"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_image(image, out_dir / f"{name}_epoch_{epoch:03d}.png")


HPARAM_GROUPS = ("data", "model", "trainer")


@rank_zero_only
def log_hparams_with_metrics(
    loggers: list[Logger], cfg: DictConfig, metrics: dict[str, Any], step: int
) -> None:
    """Log the run's data, model and trainer config with its final metrics: TensorBoard's HPARAMS
    view (so the runs of a sweep compare there), W&B's config and summary."""
    params = {"seed": cfg.get("seed")}
    params |= {g: OmegaConf.to_container(cfg[g], resolve=True) for g in HPARAM_GROUPS if g in cfg}
    numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            # Lightning writes the metrics as scalars too, which the HPARAMS view reads; at the last
            # step they repeat the values trainer.test logged.
            logger.log_hyperparams(params, numbers, step=step)
        elif isinstance(logger, WandbLogger):
            logger.log_hyperparams(params)
            logger.experiment.summary.update(metrics)
        else:
            logger.log_hyperparams(params)
        logger.finalize("success")  # trainer.test closed the writers; write this out too


# --- callbacks -----------------------------------------------------------------------------------


class EpochImages:
    """Publishes the images of `draw` after every `every_n_epochs` training epochs, and at the end
    of fit unless the last ones already show the final weights. Subclasses say what to draw; the
    `Pictures` callback calls these hooks."""

    def __init__(self, every_n_epochs: int = 1):
        self.every_n_epochs = every_n_epochs
        self._drawn_at_step: int | None = None

    def draw(self, trainer: L.Trainer, model: L.LightningModule) -> dict[str, torch.Tensor]:
        """Named images (C, H, W) in [0, 1]; called in eval mode without gradients."""
        raise NotImplementedError

    def _publish(self, trainer: L.Trainer, model: L.LightningModule, epoch: int) -> None:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                images = self.draw(trainer, model)
        finally:
            model.train(was_training)
        for name, image in images.items():
            publish(trainer, name, image, epoch)
        self._drawn_at_step = trainer.global_step

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._publish(trainer, pl_module, trainer.current_epoch)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._drawn_at_step:
            # The epoch counter has already moved past the last epoch trained.
            self._publish(trainer, pl_module, max(trainer.current_epoch - 1, 0))


class Pictures(Callback):
    """Draws each picture it is given (EpochImages; None leaves one out) at its epochs.

    One callback for all of them, not one each: Lightning calls every hook of every callback at
    every training step, and these draw only at the ends of epochs and of fit."""

    def __init__(self, **pictures: EpochImages | None):
        self.pictures = [picture for picture in pictures.values() if picture is not None]
        self.seconds = 0.0  # spent drawing and publishing, for the run's phases (phases.py)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for picture in self.pictures:
            picture.on_fit_start(trainer, pl_module)

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        started = time.perf_counter()
        for picture in self.pictures:
            picture.on_train_epoch_end(trainer, pl_module)
        self.seconds += time.perf_counter() - started

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        started = time.perf_counter()
        for picture in self.pictures:
            picture.on_fit_end(trainer, pl_module)
        self.seconds += time.perf_counter() - started


class ImageGrids(EpochImages):
    """`reconstructions`: validation images (training images when there is no validation split)
    in odd columns, their reconstructions beside them;
    `samples`: decodings of `n_samples` prior draws, the same draws at every epoch (the prior's
    sampler run from one seed each time), so epochs compare; at `temperature` (model.sample);
    of a conditional model, a row per class (drawing.sample_grid)."""

    def __init__(
        self,
        every_n_epochs: int = 1,
        n_images: int = 32,
        n_samples: int = 64,
        seed=0,
        temperature: float = 1.0,
    ):
        super().__init__(every_n_epochs)
        self.n_images, self.n_samples, self.seed = n_images, n_samples, seed
        self.temperature = temperature

    def draw(self, trainer: L.Trainer, model: L.LightningModule) -> dict[str, torch.Tensor]:
        datamodule = trainer.datamodule
        split = "val" if len(datamodule.split("val")) else "train"  # no val split: val_fraction=0
        images, labels = datamodule.examples(split, self.n_images)
        y = model.condition_of(labels.to(model.device), datamodule)
        generator = torch.Generator(model.device).manual_seed(self.seed)
        return {
            "reconstructions": reconstruction_grid(model, images.to(model.device), y),
            "samples": sample_grid(model, self.n_samples, generator, self.temperature),
        }


class LatentTraversals(EpochImages):
    """`traversals`: each latent dimension of the first test image's posterior mean swept over
    +-span, one row per dimension, the dimension with the most KL (over `n_images` test images)
    first; a conditional model's decodings all of that image's class."""

    def __init__(
        self, every_n_epochs: int = 1, n_images: int = 500, span: float = 3.0, steps: int = 9
    ):
        super().__init__(every_n_epochs)
        self.n_images, self.span, self.steps = n_images, span, steps

    def draw(self, trainer: L.Trainer, model: L.LightningModule) -> dict[str, torch.Tensor]:
        if not model.posterior.traversable:  # a VQ-VAE's code map: no dimension to sweep
            return {}
        images, labels = trainer.datamodule.examples("test", self.n_images)
        images = images.to(model.device)
        y = model.condition_of(labels.to(model.device), trainer.datamodule)
        order = model.kl_per_dim(images, y).mean(dim=0).argsort(descending=True)
        y_centre = None if y is None else y[:1]
        centre, _ = model.encode(images[:1], y_centre)
        grid = traversal_grid(model, centre[0], order, self.span, self.steps, y_centre)
        return {"traversals": grid}


class Interpolations(EpochImages):
    """`interpolations`: `n_pairs` pairs of test images and the decoded line between them (as
    the first image's class, for a conditional model)."""

    def __init__(self, every_n_epochs: int = 1, n_pairs: int = 4, steps: int = 8):
        super().__init__(every_n_epochs)
        self.n_pairs, self.steps = n_pairs, steps

    def draw(self, trainer: L.Trainer, model: L.LightningModule) -> dict[str, torch.Tensor]:
        images, labels = trainer.datamodule.examples("test", 2 * self.n_pairs)
        images = images.to(model.device)
        y = model.condition_of(labels.to(model.device), trainer.datamodule)
        return {"interpolations": interpolation_grid(model, images, self.steps, y)}


class LatentMap(EpochImages):
    """`latent_map`: the posterior means of `n_images` test images in the plane, coloured by their
    label, or by each factor in its own panel."""

    def __init__(self, every_n_epochs: int = 1, n_images: int = 1000):
        super().__init__(every_n_epochs)
        self.n_images = n_images

    def draw(self, trainer: L.Trainer, model: L.LightningModule) -> dict[str, torch.Tensor]:
        images, labels = trainer.datamodule.examples("test", self.n_images)
        y = model.condition_of(labels.to(model.device), trainer.datamodule)
        mu, _ = model.encode(images.to(model.device), y)
        figure = latent_map_figure(mu, labels, trainer.datamodule.label_names)
        return {"latent_map": rendered(figure)}


class KLPerDimension(EpochImages):
    """`kl_per_dim`: a bar chart of the KL of each latent dimension over `n_images` test images,
    each stochastic layer of a hierarchy in its own colour; dimensions near 0 nats are unused."""

    def __init__(self, every_n_epochs: int = 1, n_images: int = 1000):
        super().__init__(every_n_epochs)
        self.n_images = n_images

    def draw(self, trainer: L.Trainer, model: L.LightningModule) -> dict[str, torch.Tensor]:
        images, labels = trainer.datamodule.examples("test", self.n_images)
        y = model.condition_of(labels.to(model.device), trainer.datamodule)
        layers = model.posterior_by_layer(images.to(model.device), y)
        return {
            "kl_per_dim": rendered(kl_figure([layer.kl_per_dim.mean(dim=0) for layer in layers]))
        }


# --- console -------------------------------------------------------------------------------------


class EpochLog(Callback):
    """One log line per epoch with the progress-bar metrics, numbered from 0 as Lightning's bar
    and checkpoint names are: the run's record in train.log, on a terminal or not. With
    `console=False` (a live bar shows the same there) the line goes to the log file only."""

    def __init__(self, console: bool = True):
        self.extra = {} if console else FILE_ONLY
        self._started = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A fit resumed mid-epoch starts there, without on_train_epoch_start.
        self._started = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        shown = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in sorted(trainer.progress_bar_metrics.items())
        )
        last = f"/{trainer.max_epochs - 1}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        log.info(
            "epoch %d%s %s (%.1f s)",
            trainer.current_epoch,
            last,
            shown,
            time.perf_counter() - self._started,
            extra=self.extra,
        )


class NoLiveBar(ProgressBar):
    """The progress bar of a stdout that is not a terminal (CI, `> file`): none, since each
    refresh of a live bar would be a new line there; EpochLog's lines show the progress. Among
    the callbacks so that Lightning adds no bar of its own."""

    def disable(self) -> None:
        pass

    def enable(self) -> None:
        pass


def console_callbacks(trainer_cfg: DictConfig) -> list[Callback]:
    """Rich progress bar and model summary where the Trainer config enables them, and a log line
    per epoch; on a stdout that is not a terminal, the lines are the progress, with no bar."""
    callbacks: list[Callback] = []
    if trainer_cfg.get("enable_progress_bar", True):
        terminal = sys.stdout.isatty()
        bar = RichProgressBar() if terminal else NoLiveBar()
        callbacks += [bar, EpochLog(console=not terminal)]
    if trainer_cfg.get("enable_model_summary", True):
        callbacks.append(RichModelSummary(max_depth=2))
    return callbacks
