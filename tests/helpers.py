"""What many test files share: tiny training settings, composing train.py's config, running the
entry points as a user would, and reading TensorBoard's event files."""

import math
import subprocess
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vae_lightning.data import ShapesDataModule

ROOT = Path(__file__).resolve().parents[1]

# Small enough to train in seconds on 2 CPU cores, large enough that the loss visibly falls.
TINY = [
    "data.size=640",
    "data.batch_size=32",
    "data.eval_batch_size=64",
    "model.hidden_dims=[8,16]",
    "model.dense_dim=32",
    "model.latent_dim=4",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.pictures.image_grids.n_images=8",
    "callbacks.pictures.image_grids.n_samples=16",
]


def make_config(output_dir: Path, *overrides: str) -> DictConfig:
    """The root config of train.py, composed as Hydra would, with TINY settings in output_dir."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                *TINY,
                f"paths.root_dir={ROOT}",
                f"paths.output_dir={output_dir}",
                *overrides,
            ],
        )


def run_script(*args: str, cwd: Path = ROOT, env: dict | None = None):
    """Run a top-level script of the project as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600
    )


def read_tensorboard(log_dir: Path) -> EventAccumulator:
    """Every scalar and image of the event files under log_dir."""
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


class PoisonedShapes(ShapesDataModule):
    """The shapes data with one training batch of NaN images, at step `nan_step`."""

    def __init__(self, nan_step: int, **kwargs):
        super().__init__(**kwargs)
        self.nan_step = nan_step

    def on_after_batch_transfer(self, batch, dataloader_idx):
        images, labels = super().on_after_batch_transfer(batch, dataloader_idx)
        if self.trainer.training and self.trainer.global_step == self.nan_step:
            images = torch.full_like(images, math.nan)
        return images, labels
