"""What the model learned, as pictures: callbacks that log them during training, the functions that
draw them (sample.py draws with the same ones), and the helpers that hand pictures, hyperparameters
and final metrics to the loggers.

Every picture is an image tensor (C, H, W) in [0, 1] (a matplotlib figure is rendered to one)
and goes one way, `publish`: each logger's own image API and a PNG under `<run dir>/images/`.
"""

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ProgressBar, RichModelSummary, RichProgressBar
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import make_grid, save_image

from vae_lightning.data.shapes import FACTOR_NAMES, ShapesDataModule
from vae_lightning.elbo import gaussian_kl_per_dim

log = logging.getLogger(__name__)

# --- drawing -------------------------------------------------------------------------------------


def grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """Images (N, C, H, W) tiled `nrow` to a row, 1 grey pixel between them: `nrow * (W + 1) + 1`
    pixels wide, `rows * (H + 1) + 1` high."""
    return make_grid(images.float().cpu(), nrow=nrow, padding=1, pad_value=0.5)


def reconstruction_grid(model: L.LightningModule, images: torch.Tensor) -> torch.Tensor:
    """Inputs in odd columns, their reconstructions beside them, 4 pairs to a row."""
    side_by_side = torch.stack([images, model.reconstruct(images)], dim=1).flatten(0, 1)
    return grid(side_by_side, nrow=8)


def sample_grid(model: L.LightningModule, z: torch.Tensor) -> torch.Tensor:
    """Decodings of latent points z (N, latent_dim), 8 to a row."""
    return grid(model.decode_mean(z), nrow=8)


def traversal_grid(
    model: L.LightningModule, centre: torch.Tensor, dims: Sequence[int], span: float, steps: int
) -> torch.Tensor:
    """One row per latent dimension in `dims`: that coordinate of `centre` (latent_dim,) moved over
    `steps` values from -span to +span around its own value, the others held fixed."""
    directions = torch.eye(len(centre), device=centre.device)[torch.as_tensor(dims).tolist()]
    offsets = torch.linspace(-span, span, steps, device=centre.device)
    z = centre + offsets[None, :, None] * directions[:, None, :]  # (len(dims), steps, latent_dim)
    return grid(model.decode_mean(z.flatten(0, 1)), nrow=steps)


def interpolation_grid(
    model: L.LightningModule, starts: torch.Tensor, ends: torch.Tensor, steps: int
) -> torch.Tensor:
    """One row per pair of images: the start, decodings of `steps` points on the straight line
    between the two posterior means (both included), the end."""
    mu_start, _ = model.encoder(starts)
    mu_end, _ = model.encoder(ends)
    t = torch.linspace(0, 1, steps, device=mu_start.device)[None, :, None]
    z = mu_start[:, None] + t * (mu_end - mu_start)[:, None]
    decoded = model.decode_mean(z.flatten(0, 1)).unflatten(0, z.shape[:2])
    rows = torch.cat([starts[:, None], decoded, ends[:, None]], dim=1)
    return grid(rows.flatten(0, 1), nrow=steps + 2)


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z_d|x) || N(0, 1)) of each latent dimension d, averaged over the images."""
    return gaussian_kl_per_dim(mu, logvar).mean(dim=0)


def new_figure(width: float, height: float, panels: int = 1) -> tuple[Figure, list]:
    """A figure drawn by Agg (no pyplot: no GUI backend, no global state, nothing to close) and
    its row of axes. Margins are fixed in inches: a layout engine would take most of the drawing
    time."""
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    figure.subplots_adjust(
        left=0.7 / width,
        right=1 - 0.15 / width,
        bottom=0.55 / height,
        top=1 - 0.35 / height,
        wspace=0.5,
    )
    return figure, list(figure.subplots(1, panels, squeeze=False)[0])


def rendered(figure: Figure) -> torch.Tensor:
    """The figure as an RGB image tensor in [0, 1], drawn once for every logger and the PNG."""
    figure.canvas.draw()
    rgba = torch.from_numpy(np.asarray(figure.canvas.buffer_rgba()).copy())
    return rgba[..., :3].permute(2, 0, 1).float() / 255


def kl_figure(kl: torch.Tensor) -> Figure:
    """Bars of the KL of each latent dimension, largest first (the row order of the traversals)."""
    kl = kl.cpu()
    order = kl.argsort(descending=True).tolist()
    figure, (axes,) = new_figure(max(4.0, 1.5 + 0.3 * len(kl)), 3.0)
    axes.bar(range(len(kl)), kl[order].tolist(), color="tab:blue")
    axes.set_xticks(range(len(kl)), [f"z{d}" for d in order], rotation=90 if len(kl) > 16 else 0)
    axes.set_ylabel("KL (nats)")
    axes.set_title(f"KL per latent dimension, total {kl.sum():.2f} nats")
    return figure


def principal_components(points: torch.Tensor, k: int = 2) -> torch.Tensor:
    """Coordinates of points (N, D) on their first k principal axes (exact SVD: D is small)."""
    centred = points - points.mean(dim=0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return centred @ vh[:k].T


def latent_map_figure(mu: torch.Tensor, labels: torch.Tensor, names: Sequence[str]) -> Figure:
    """Posterior means in the plane (their first two principal components when latent_dim > 2),
    one panel per label column, coloured by its value."""
    if mu.shape[1] > 2:
        xy, axis_names = principal_components(mu), ("PC 1", "PC 2")
    else:
        xy, axis_names = torch.nn.functional.pad(mu, (0, 2 - mu.shape[1])), ("z0", "z1")
    labels = labels.reshape(len(labels), -1).cpu()
    # Classes get distinct colours; factors (shape aside, all ordinal) get a gradient.
    cmap = "tab10" if labels.shape[1] == 1 else "viridis"
    figure, panels = new_figure(3.6 * labels.shape[1], 3.0, panels=labels.shape[1])
    for axes, column, name in zip(panels, labels.T, names, strict=True):
        points = axes.scatter(*xy.T.cpu(), c=column, s=4, cmap=cmap, rasterized=True)
        figure.colorbar(points, ax=axes)
        axes.set(title=name, xlabel=axis_names[0], ylabel=axis_names[1])
    return figure


# --- logging -------------------------------------------------------------------------------------


def log_image(trainer: L.Trainer, tag: str, image: torch.Tensor) -> None:
    """Send a (C, H, W) image in [0, 1] to every logger that takes images, through its own API."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, global_step=trainer.global_step)
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[image], step=trainer.global_step)


def publish(trainer: L.Trainer, name: str, image: torch.Tensor, epoch: int) -> None:
    """Log as `images/<name>` and save as `<run dir>/images/<name>_epoch=NNN.png`."""
    log_image(trainer, f"images/{name}", image)
    out_dir = Path(trainer.default_root_dir) / "images"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_image(image, out_dir / f"{name}_epoch={epoch:03d}.png")


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
    every training step, about 60 Python calls a step per callback, and these draw only at the
    ends of epochs and of fit."""

    def __init__(self, **pictures: EpochImages | None):
        self.pictures = [picture for picture in pictures.values() if picture is not None]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for picture in self.pictures:
            picture.on_fit_start(trainer, pl_module)

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for picture in self.pictures:
            picture.on_train_epoch_end(trainer, pl_module)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for picture in self.pictures:
            picture.on_fit_end(trainer, pl_module)


class ImageGrids(EpochImages):
    """`reconstructions`: validation images in odd columns, their reconstructions beside them;
    `samples`: decodings of `n_samples` prior draws fixed at the start, so epochs compare."""

    def __init__(self, every_n_epochs: int = 1, n_images: int = 32, n_samples: int = 64, seed=0):
        super().__init__(every_n_epochs)
        self.n_images, self.n_samples, self.seed = n_images, n_samples, seed
        self.prior_draws: torch.Tensor | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        self.prior_draws = torch.randn(
            self.n_samples, pl_module.hparams.latent_dim, generator=generator
        )

    def draw(self, trainer: L.Trainer, model: L.LightningModule) -> dict[str, torch.Tensor]:
        images, _ = trainer.datamodule.examples("val", self.n_images)
        return {
            "reconstructions": reconstruction_grid(model, images.to(model.device)),
            "samples": sample_grid(model, self.prior_draws.to(model.device)),
        }


class LatentTraversals(EpochImages):
    """`traversals`: each latent dimension of the first test image's posterior mean swept over
    +-span, one row per dimension, the dimension with the most KL (over `n_images` test images)
    first."""

    def __init__(
        self, every_n_epochs: int = 1, n_images: int = 500, span: float = 3.0, steps: int = 9
    ):
        super().__init__(every_n_epochs)
        self.n_images, self.span, self.steps = n_images, span, steps

    def draw(self, trainer: L.Trainer, model: L.LightningModule) -> dict[str, torch.Tensor]:
        images, _ = trainer.datamodule.examples("test", self.n_images)
        mu, logvar = model.encoder(images.to(model.device))
        order = kl_per_dim(mu, logvar).argsort(descending=True)
        return {"traversals": traversal_grid(model, mu[0], order, self.span, self.steps)}


class Interpolations(EpochImages):
    """`interpolations`: `n_pairs` pairs of test images and the decoded line between them."""

    def __init__(self, every_n_epochs: int = 1, n_pairs: int = 4, steps: int = 8):
        super().__init__(every_n_epochs)
        self.n_pairs, self.steps = n_pairs, steps

    def draw(self, trainer: L.Trainer, model: L.LightningModule) -> dict[str, torch.Tensor]:
        images, _ = trainer.datamodule.examples("test", 2 * self.n_pairs)
        images = images.to(model.device)
        return {"interpolations": interpolation_grid(model, images[0::2], images[1::2], self.steps)}


def label_names(datamodule: Any, labels: torch.Tensor) -> list[str]:
    """What each label column is: the factors of the shapes data, else a class label."""
    if labels.ndim == 1:
        return ["label"]
    if isinstance(datamodule, ShapesDataModule):
        return list(FACTOR_NAMES)
    return [f"factor {i}" for i in range(labels.shape[1])]


class LatentMap(EpochImages):
    """`latent_map`: the posterior means of `n_images` test images in the plane, coloured by their
    label, or by each factor in its own panel."""

    def __init__(self, every_n_epochs: int = 1, n_images: int = 1000):
        super().__init__(every_n_epochs)
        self.n_images = n_images

    def draw(self, trainer: L.Trainer, model: L.LightningModule) -> dict[str, torch.Tensor]:
        images, labels = trainer.datamodule.examples("test", self.n_images)
        mu, _ = model.encoder(images.to(model.device))
        figure = latent_map_figure(mu, labels, label_names(trainer.datamodule, labels))
        return {"latent_map": rendered(figure)}


class KLPerDimension(EpochImages):
    """`kl_per_dim`: a bar chart of the KL of each latent dimension over `n_images` test images;
    dimensions near 0 nats are unused."""

    def __init__(self, every_n_epochs: int = 1, n_images: int = 1000):
        super().__init__(every_n_epochs)
        self.n_images = n_images

    def draw(self, trainer: L.Trainer, model: L.LightningModule) -> dict[str, torch.Tensor]:
        images, _ = trainer.datamodule.examples("test", self.n_images)
        kl = kl_per_dim(*model.encoder(images.to(model.device)))
        return {"kl_per_dim": rendered(kl_figure(kl))}


# --- console -------------------------------------------------------------------------------------


class EpochLog(ProgressBar):
    """One log line per epoch with the progress-bar metrics, for logs that are not a terminal
    (CI, `> file`), where a live bar would print every refresh as a new line."""

    def __init__(self):
        super().__init__()
        self.enabled = True
        self._started = 0.0

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        metrics = self.get_metrics(trainer, pl_module)
        shown = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in sorted(metrics.items())
            if k != "v_num"
        )
        log.info(
            "epoch %d/%s %s (%.1f s)",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            shown,
            time.perf_counter() - self._started,
        )


def console_callbacks(trainer_cfg: DictConfig) -> list[Callback]:
    """Rich progress bar and model summary where the Trainer config enables them; on a stdout that
    is not a terminal, one line per epoch instead of the bar."""
    callbacks: list[Callback] = []
    if trainer_cfg.get("enable_progress_bar", True):
        callbacks.append(RichProgressBar() if sys.stdout.isatty() else EpochLog())
    if trainer_cfg.get("enable_model_summary", True):
        callbacks.append(RichModelSummary(max_depth=2))
    return callbacks
