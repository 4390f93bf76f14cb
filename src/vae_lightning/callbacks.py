"""Callbacks that show what the model does: grids of reconstructions and of prior samples."""

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image


def log_image(trainer: L.Trainer, tag: str, grid: torch.Tensor) -> None:
    """Send a (C, H, W) image in [0, 1] to every logger that takes images, through its own API."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, grid, global_step=trainer.global_step)
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[grid], step=trainer.global_step)


class ImageGrids(L.Callback):
    """Every `every_n_epochs` validation epochs, log and save as PNG under `<run dir>/images/`:

    - `reconstructions`: validation inputs in odd columns, their reconstructions beside them;
    - `samples`: decodings of `n_samples` prior draws fixed at the start, so epochs compare.
    """

    def __init__(self, every_n_epochs: int = 1, n_images: int = 32, n_samples: int = 64, seed=0):
        self.every_n_epochs = every_n_epochs
        self.n_images, self.n_samples, self.seed = n_images, n_samples, seed
        self.prior_draws: torch.Tensor | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        self.prior_draws = torch.randn(
            self.n_samples, pl_module.hparams.latent_dim, generator=generator
        )

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        images = trainer.datamodule.examples("val", self.n_images)[0].to(pl_module.device)
        with torch.no_grad():
            reconstructions = pl_module.reconstruct(images)
            samples = pl_module.decode_mean(self.prior_draws.to(pl_module.device))
        side_by_side = torch.stack([images, reconstructions], dim=1).flatten(0, 1)
        grids = {
            "reconstructions": make_grid(side_by_side, nrow=8, padding=1, pad_value=0.5),
            "samples": make_grid(samples, nrow=8, padding=1, pad_value=0.5),
        }
        out_dir = Path(trainer.default_root_dir) / "images"
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, grid in grids.items():
            grid = grid.float().cpu()
            log_image(trainer, f"images/{name}", grid)
            save_image(grid, out_dir / f"{name}_epoch={trainer.current_epoch:03d}.png")
