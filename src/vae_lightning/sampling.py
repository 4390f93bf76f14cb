"""What `sample.py` runs: image grids from a trained checkpoint, drawn by the same functions as the
training callbacks. The model comes from the checkpoint alone; the data, where a mode needs test
images, from the config the run saved in `<run dir>/.hydra/config.yaml`."""

import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torchvision.utils import save_image

from vae_lightning.config import SAMPLE_RULES, check_config
from vae_lightning.drawing import (
    interpolation_grid,
    reconstruction_grid,
    sample_grid,
    traversal_grid,
)
from vae_lightning.module import VAE
from vae_lightning.runs import load_checkpoint_model, run_data_config, run_dir_of

log = logging.getLogger(__name__)

# Test images that rank the latent dimensions by KL for the traversals, as LatentTraversals does.
N_KL_IMAGES = 500


def sample_grids(cfg: DictConfig, model: VAE) -> dict[str, torch.Tensor]:
    """The grids of one mode, by file name (without .png)."""
    if cfg.mode == "prior":
        return {"prior": sample_grid(model, cfg.n, temperature=cfg.temperature)}
    datamodule = instantiate(run_data_config(cfg.ckpt_path, f"mode={cfg.mode}"))
    if cfg.mode == "reconstruct":
        return {"reconstruct": reconstruction_grid(model, datamodule.examples("test", cfg.n)[0])}
    if cfg.mode == "interpolate":
        images, _ = datamodule.examples("test", 2 * cfg.n)
        return {"interpolate": interpolation_grid(model, images, cfg.steps)}
    images, _ = datamodule.examples("test", max(cfg.n, N_KL_IMAGES))
    mu, _ = model.encode(images)
    order = model.kl_per_dim(images).mean(dim=0).argsort(descending=True)
    return {
        f"traverse_{i:03d}": traversal_grid(model, mu[i], order, cfg.span, cfg.steps)
        for i in range(min(cfg.n, len(mu)))
    }


def sample(cfg: DictConfig) -> list[Path]:
    """Write the PNGs of `cfg.mode` to `cfg.out` (default: `<run dir>/samples/`), return paths."""
    check_config(cfg, SAMPLE_RULES)
    model = load_checkpoint_model(cfg.ckpt_path)
    torch.manual_seed(cfg.seed)
    with torch.no_grad():
        grids = sample_grids(cfg, model)
    out_dir = Path(cfg.out) if cfg.out else run_dir_of(Path(cfg.ckpt_path)) / "samples"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, grid in grids.items():
        paths.append(out_dir / f"{name}.png")
        save_image(grid, paths[-1])
    log.info("wrote %d image(s) to %s", len(paths), out_dir)
    return paths
