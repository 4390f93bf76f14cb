"""What `sample.py` runs: image grids from a trained checkpoint, drawn by the same functions as the
training callbacks. The model comes from the checkpoint alone; the data, where a mode needs test
images, from the config the run saved in `<run dir>/.hydra/config.yaml`."""

import itertools
import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torchvision.utils import save_image

from vae_lightning.config import SAMPLE_RULES, check_config
from vae_lightning.data.classes import class_index
from vae_lightning.drawing import grid as tiled
from vae_lightning.drawing import (
    interpolation_grid,
    reconstruction_grid,
    sample_grid,
    traversal_grid,
)
from vae_lightning.errors import ConfigError
from vae_lightning.gmm_sampler import gmm_of_checkpoint, why_no_mixture
from vae_lightning.module import VAE
from vae_lightning.runs import load_checkpoint_model, run_data_config, run_dir_of

log = logging.getLogger(__name__)

# Test images that rank the latent dimensions by KL for the traversals, as LatentTraversals does.
N_KL_IMAGES = 500


def chosen_class(cfg: DictConfig, model: VAE) -> int | None:
    """The class index `label=` names, by index or by one of the names the checkpoint saved;
    a ConfigError where the model has no condition or the mode draws no samples."""
    if cfg.label is None:
        return None
    if not model.n_classes:
        allowed = "null: the checkpoint's model is unconditional (not model.condition=label)"
        raise ConfigError("label", cfg.label, allowed)
    if cfg.mode != "prior":
        allowed = f"null with mode={cfg.mode}: its test images are decoded as their own classes"
        raise ConfigError("label", cfg.label, allowed)
    names = model.hparams.class_names or [str(index) for index in range(model.n_classes)]
    return class_index(cfg.label, names)


def sample_grids(cfg: DictConfig, model: VAE) -> dict[str, torch.Tensor]:
    """The grids of one mode, by file name (without .png); a conditional model's samples are of
    the class `label=` names, or a row per class, its other grids of the test images' classes."""
    label = chosen_class(cfg, model)
    if cfg.mode == "prior" and cfg.sampler == "prior":
        return {"prior": sample_grid(model, cfg.n, temperature=cfg.temperature, label=label)}
    if cfg.mode == "traverse" and not model.posterior.traversable:
        allowed = "prior, reconstruct or interpolate: a VQ-VAE's code map has no dimension to sweep"
        raise ConfigError("mode", cfg.mode, allowed)
    no_mixture = why_no_mixture(model)
    if cfg.sampler == "gmm" and no_mixture:
        raise ConfigError("sampler", cfg.sampler, f"prior: {no_mixture}")
    needed_by = f"mode={cfg.mode}" if cfg.mode != "prior" else "sampler=gmm"
    datamodule = instantiate(run_data_config(cfg.ckpt_path, needed_by))
    if cfg.mode == "prior":
        mixture = gmm_of_checkpoint(model, datamodule, cfg.ckpt_path, cfg.gmm_components)
        z = mixture.sample(cfg.n).to(torch.get_default_dtype())
        return {"gmm": tiled(model.decode(z), nrow=8)}  # as sample_grid tiles the prior's
    if cfg.mode == "reconstruct":
        images, labels = datamodule.examples("test", cfg.n)
        y = model.condition_of(labels, datamodule)
        return {"reconstruct": reconstruction_grid(model, images, y)}
    if cfg.mode == "interpolate":
        images, labels = datamodule.examples("test", 2 * cfg.n)
        y = model.condition_of(labels, datamodule)
        return {"interpolate": interpolation_grid(model, images, cfg.steps, y)}
    images, labels = datamodule.examples("test", max(cfg.n, N_KL_IMAGES))
    y = model.condition_of(labels, datamodule)
    mu = model.posterior_mean(images, y)
    order = model.kl_per_dim(images, y).mean(dim=0).argsort(descending=True)
    return {
        f"traverse_{i:03d}": traversal_grid(
            model, mu[i], order, cfg.span, cfg.steps, None if y is None else y[i]
        )
        for i in range(min(cfg.n, len(mu)))
    }


def free_paths(out_dir: Path, names: Iterable[str]) -> list[Path]:
    """`<name>.png` for each name in `out_dir`, or, where one of them exists, `<name>_1.png`,
    `<name>_2.png`, ...: the first suffix that every name has free, so that a later call never
    replaces an earlier one's images and the files of one call share one suffix."""
    names = list(names)
    suffixes = itertools.chain([""], (f"_{i}" for i in itertools.count(1)))
    candidates = ([out_dir / f"{name}{suffix}.png" for name in names] for suffix in suffixes)
    return next(paths for paths in candidates if not any(path.exists() for path in paths))


def sample(cfg: DictConfig) -> list[Path]:
    """Write the PNGs of `cfg.mode` to `cfg.out` (default: `<run dir>/samples/`) under names no
    file there has yet (free_paths), log and return their paths."""
    check_config(cfg, SAMPLE_RULES)
    model = load_checkpoint_model(cfg.ckpt_path)
    torch.manual_seed(cfg.seed)
    with torch.no_grad():
        grids = sample_grids(cfg, model)
    out_dir = Path(cfg.out) if cfg.out else run_dir_of(Path(cfg.ckpt_path)) / "samples"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = free_paths(out_dir, grids)
    for path, grid in zip(paths, grids.values(), strict=True):
        # "x": a file that appeared since free_paths looked (another call) fails, not replaced
        with path.open("xb") as file:
            save_image(grid, file, format="png")
        log.info("wrote %s", path)
    return paths
