"""What `sample.py` runs: image grids from a trained checkpoint, drawn by the same functions as the
training callbacks. The model comes from the checkpoint alone; the data, where a mode needs test
images, from the config the run saved in `<run dir>/.hydra/config.yaml`."""

import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import save_image

from vae_lightning.callbacks import (
    examples,
    interpolation_grid,
    kl_per_dim,
    reconstruction_grid,
    sample_grid,
    traversal_grid,
)
from vae_lightning.config import SAMPLE_RULES, ConfigError, check_config
from vae_lightning.module import VAE

log = logging.getLogger(__name__)

# Test images that rank the latent dimensions by KL for the traversals, as LatentTraversals does.
N_KL_IMAGES = 500


def run_dir_of(ckpt: Path) -> Path:
    """train.py keeps checkpoints in `<run dir>/checkpoints/`."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def load_model(ckpt_path: str | None) -> VAE:
    """The VAE of a checkpoint, on the CPU, in eval mode; a ConfigError if it cannot be read."""
    allowed = "a checkpoint of train.py, e.g. ckpt_path=outputs/DATE/TIME/checkpoints/last.ckpt"
    if not ckpt_path or not Path(ckpt_path).is_file():
        raise ConfigError("ckpt_path", ckpt_path, f"{allowed} (no such file)")
    try:
        model = VAE.load_from_checkpoint(ckpt_path, map_location="cpu")
    except Exception as error:  # whatever the file holds instead, the fix is another ckpt_path
        reason = f"{type(error).__name__} on loading"
        raise ConfigError("ckpt_path", ckpt_path, f"{allowed} ({reason})") from None
    return model.eval()


def load_run_data(ckpt_path: str, mode: str):
    """The datamodule of the run that wrote the checkpoint, rebuilt from its saved config."""
    run_dir = run_dir_of(Path(ckpt_path))
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise ConfigError(
            "ckpt_path",
            ckpt_path,
            f"mode={mode} needs the run's data: a checkpoint in <run dir>/checkpoints/ with "
            f"<run dir>/.hydra/config.yaml beside it (not found: {saved})",
        )
    run_cfg = OmegaConf.load(saved)
    hydra_cfg = run_dir / ".hydra" / "hydra.yaml"
    if hydra_cfg.is_file():
        # Data paths are relative to where the run was started, not to where sample.py is.
        run_cfg.paths.root_dir = OmegaConf.load(hydra_cfg).hydra.runtime.cwd
    return instantiate(run_cfg.data)


def sample_grids(cfg: DictConfig, model: VAE) -> dict[str, torch.Tensor]:
    """The grids of one mode, by file name (without .png)."""
    if cfg.mode == "prior":
        z = torch.randn(cfg.n, model.hparams.latent_dim)
        return {"prior": sample_grid(model, z)}
    datamodule = load_run_data(cfg.ckpt_path, cfg.mode)
    if cfg.mode == "reconstruct":
        return {"reconstruct": reconstruction_grid(model, examples(datamodule, "test", cfg.n)[0])}
    if cfg.mode == "interpolate":
        images, _ = examples(datamodule, "test", 2 * cfg.n)
        return {"interpolate": interpolation_grid(model, images[0::2], images[1::2], cfg.steps)}
    images, _ = examples(datamodule, "test", max(cfg.n, N_KL_IMAGES))
    mu, logvar = model.encoder(images)
    order = kl_per_dim(mu, logvar).argsort(descending=True)
    return {
        f"traverse_{i:03d}": traversal_grid(model, mu[i], order, cfg.span, cfg.steps)
        for i in range(min(cfg.n, len(mu)))
    }


def sample(cfg: DictConfig) -> list[Path]:
    """Write the PNGs of `cfg.mode` to `cfg.out` (default: `<run dir>/samples/`), return paths."""
    check_config(cfg, SAMPLE_RULES)
    model = load_model(cfg.ckpt_path)
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
