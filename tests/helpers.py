"""What many test files share: tiny training settings, composing train.py's config, running the
entry points as a user would, reading TensorBoard's event files, data with a NaN batch, and the
linear-Gaussian model whose log p(x) and posterior are exact."""

import math
import subprocess
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.distributions import MultivariateNormal

from vae_lightning.config import group_choices_by_dotted_key
from vae_lightning.data import ShapesDataModule
from vae_lightning.elbo import gaussian_kl
from vae_lightning.module import VAE
from vae_lightning.options import part_config

ROOT = Path(__file__).resolve().parents[1]
# The first 600 training and 200 test images of Fashion-MNIST in its own IDX files (README.md
# there): the tests of real data need no download and no Debian package.
FASHION_MNIST_SUBSET = ROOT / "tests" / "data" / "fashion-mnist"

# Small enough to train in seconds on 2 CPU cores, large enough that the loss visibly falls.
TINY = [
    "data.size=640",
    "data.batch_size=32",
    "data.eval_batch_size=64",
    "model.network.hidden_dims=[8,16]",
    "model.latent_dim=4",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.pictures.image_grids.n_images=8",
    "callbacks.pictures.image_grids.n_samples=16",
]


def make_config(output_dir: Path, *overrides: str) -> DictConfig:
    """The root config of train.py, composed as Hydra would from a command line, with TINY
    settings in output_dir."""
    overrides = [*TINY, f"paths.root_dir={ROOT}", f"paths.output_dir={output_dir}", *overrides]
    # as the command line reads them: model.likelihood=gaussian chooses that part's config
    overrides = group_choices_by_dotted_key(ROOT / "conf", overrides)
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


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


# ---- the linear-Gaussian model ------------------------------------------------------------------
# z ~ N(0, I), x = W z + b + sigma * eps. Then log p(x) = log N(x; b, W W^T + sigma^2 I), and
# p(z|x) = N(m, S) with S = (I + W^T W / sigma^2)^-1 and m = S W^T (x - b) / sigma^2.

DX, DZ, SIGMA = 6, 3, 0.2
F64 = torch.float64


def part(name: str, option: str, **values) -> dict:
    """A part's config as conf/model/<name>/<option>.yaml gives it, with `values` set."""
    return {**part_config(name, option), **values}


class SideBySide(nn.Module):
    """An encoder giving (mu, log sigma^2) as the one tensor a posterior reads: side by side."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.encoder(x), dim=-1)


class FixedPosterior(nn.Module):
    """An 'encoder' giving the same diagonal Gaussian q for every image of the batch."""

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor):
        super().__init__()
        self.mu, self.logvar = mu, logvar

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.shape[0]
        return self.mu.expand(batch, *self.mu.shape), self.logvar.expand(batch, *self.mu.shape)


class LinearGaussian:
    """W, b, a data point x drawn from the model (its generator draws more), and the exact
    quantities."""

    def __init__(self, seed: int, orthogonal: bool = False):
        self.generator = torch.Generator().manual_seed(seed)
        w = torch.randn(DX, DZ, generator=self.generator, dtype=F64)
        if orthogonal:  # orthogonal columns: W^T W and so the exact posterior are diagonal
            w = torch.linalg.qr(w).Q * torch.tensor([2.0, 1.0, 0.5], dtype=F64)
        self.w, self.b = w, torch.randn(DX, generator=self.generator, dtype=F64)
        self.x = self.draw(1)[0]

    def draw(self, n: int) -> torch.Tensor:
        """n data points (n, DX) from the model."""
        z = torch.randn(n, DZ, generator=self.generator, dtype=F64)
        noise = torch.randn(n, DX, generator=self.generator, dtype=F64)
        return z @ self.w.T + self.b + SIGMA * noise

    def log_px(self) -> float:
        cov = self.w @ self.w.T + SIGMA**2 * torch.eye(DX, dtype=F64)
        return MultivariateNormal(self.b, cov).log_prob(self.x).item()

    def posterior_map(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, S): the exact posterior of any x is N(A (x - b), S)."""
        cov = torch.linalg.inv(torch.eye(DZ, dtype=F64) + self.w.T @ self.w / SIGMA**2)
        return cov @ self.w.T / SIGMA**2, cov

    def posterior(self) -> MultivariateNormal:
        """p(z|x) of this model's x."""
        slope, cov = self.posterior_map()
        return MultivariateNormal(slope @ (self.x - self.b), cov)

    def imperfect_q(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A deliberately imperfect diagonal q of x: the posterior's mean shifted by half its sd,
        its variances doubled."""
        post = self.posterior()
        return post.mean + 0.5 * post.stddev, (2 * post.variance).log()

    def analytic_elbo(self, mu: torch.Tensor, logvar: torch.Tensor) -> float:
        """E_q[log p(x|z)] in closed form, minus the project's closed-form KL(q || p(z))."""
        residual = self.x - self.w @ mu - self.b
        spread = (self.w.pow(2) * logvar.exp()).sum()  # tr(W diag(s^2) W^T)
        expected_log_lik = (
            -0.5 * DX * math.log(2 * math.pi * SIGMA**2)
            - 0.5 * (residual.pow(2).sum() + spread) / SIGMA**2
        )
        return (expected_log_lik - gaussian_kl(mu, logvar)).item()

    def vae(self, encoder: nn.Module) -> VAE:
        """The project's VAE module with this decoder, the given encoder of (1, 1, DX) images
        (giving mu and log sigma^2), and the fixed-sigma likelihood."""
        model = VAE((1, 1, DX), network=part("network", "mlp", hidden_dims=[4]), latent_dim=DZ,
                    likelihood=part("likelihood", "gaussian", sigma=SIGMA))  # fmt: skip
        decoder = nn.Linear(DZ, DX).double()
        decoder.weight.data, decoder.bias.data = self.w.clone(), self.b.clone()
        model.network.decoder = nn.Sequential(decoder, nn.Unflatten(1, (1, 1, DX)))
        model.network.encoder = SideBySide(encoder)
        return model

    def images(self, n: int) -> torch.Tensor:
        """This model's x, n times, as a batch of (1, 1, DX) images."""
        return self.x.view(1, 1, 1, DX).expand(n, 1, 1, DX)
