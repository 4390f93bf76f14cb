"""Finding and reading runs: their directories, saved configs and checkpoints."""

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from vae_lightning.errors import ConfigError
from vae_lightning.legacy import migrate_hparams
from vae_lightning.module import VAE
from vae_lightning.registry import DATA_MODULES, check_targets

log = logging.getLogger(__name__)

# The model's arguments that fix the shapes of the weights in a checkpoint: its parts' whole
# configs (a likelihood's too: the channels the decoder gives depend on it), and the condition,
# which widens the networks' inputs.
SHAPE_HPARAMS = ("network", "posterior", "prior", "likelihood", "latent_dim", "condition")


def _leaves(model: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The values of SHAPE_HPARAMS by dotted key, a part's each of its own: a mismatch is named
    by the key a user sets (model.network.n_layers), not by the whole part."""
    leaves = {}
    for key in SHAPE_HPARAMS:
        value = model.get(key)
        if isinstance(value, dict):
            leaves |= {f"{prefix}.{key}.{k}": v for k, v in value.items()}
        else:
            leaves[f"{prefix}.{key}"] = value
    return leaves


def run_dir_of(ckpt_path: str | Path) -> Path:
    """train.py keeps checkpoints in `<run dir>/checkpoints/`."""
    ckpt = Path(ckpt_path)
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def last_checkpoint_path(trainer: L.Trainer) -> Path | None:
    """Where the first ModelCheckpoint with `save_last` keeps `last.ckpt`."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath:
            return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}.ckpt"
    return None


def _plain(value: Any) -> Any:
    return list(value) if OmegaConf.is_list(value) or isinstance(value, list | tuple) else value


def saved_hparams(ckpt_path: str | Path) -> dict | None:
    """The hyperparameters a checkpoint holds; None if the file is damaged or not a checkpoint."""
    try:
        # mmap: only the metadata read here is loaded, not the weights.
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        return dict(checkpoint["hyper_parameters"])
    except Exception:  # torch raises many types for a file that is not a checkpoint
        return None


def newest_intact_checkpoint(folder: Path, damaged: Path) -> tuple[Path, dict] | None:
    """The most recently written checkpoint of `folder` other than `damaged` that loads, with
    its hyperparameters; None if there is none."""
    candidates = [path for path in folder.glob("*.ckpt") if path.is_file() and path != damaged]
    for path in sorted(candidates, key=lambda path: path.stat().st_mtime, reverse=True):
        hparams = saved_hparams(path)
        if hparams is not None:
            return path, hparams
    return None


def requested_checkpoint(cfg: DictConfig) -> str | None:
    """`ckpt_path` as given, `last` made this run's `checkpoints/last.ckpt` (None when there is
    none yet)."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path == "last":
        checkpoint_dir = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath")
        last = Path(checkpoint_dir or Path(cfg.paths.output_dir) / "checkpoints") / "last.ckpt"
        ckpt_path = str(last) if last.is_file() else None
    return ckpt_path


def checkpoint_to_resume(cfg: DictConfig, image_shape: tuple[int, int, int]) -> str | None:
    """The checkpoint `ckpt_path` names, checked against the model config; None to start afresh.

    `ckpt_path=last` is this run's `checkpoints/last.ckpt`, or a fresh start when there is none
    yet (as in Lightning), so a scheduler can repeat one command until the run is done.
    A `last.ckpt` that does not load (truncated, or not a checkpoint) is passed over with a
    warning for the newest intact checkpoint beside it, when there is one.
    """
    ckpt_path = requested_checkpoint(cfg)
    if ckpt_path is None:
        return None
    allowed = "the path of a .ckpt file written by train.py, last, or null"
    if not Path(ckpt_path).is_file():
        raise ConfigError("ckpt_path", ckpt_path, f"no such file; {allowed}")
    hparams = saved_hparams(ckpt_path)
    if hparams is None and Path(ckpt_path).name == "last.ckpt":
        damaged = Path(ckpt_path)
        intact = newest_intact_checkpoint(damaged.parent, damaged)
        if intact is not None:
            log.warning(
                "%s is damaged (truncated or not a checkpoint): resuming from %s, the newest "
                "intact checkpoint beside it",
                damaged,
                intact[0],
            )
            ckpt_path, hparams = str(intact[0]), intact[1]
    if hparams is None:
        raise ConfigError("ckpt_path", ckpt_path, f"not a checkpoint; {allowed}")
    model = migrate_hparams(OmegaConf.to_container(cfg.model, resolve=True))
    saved_model = migrate_hparams(hparams)
    configured, saved = _leaves(model, "model"), _leaves(saved_model, "model")
    configured["data.image_shape"] = image_shape
    saved["data.image_shape"] = hparams.get("image_shape")
    for key, value in configured.items():
        if _plain(value) != _plain(saved.get(key)):
            raise ConfigError(
                key, _plain(value), f"the checkpoint {ckpt_path} has {key}={_plain(saved.get(key))}"
            )
    return ckpt_path


def load_checkpoint_model(ckpt_path: str | None) -> VAE:
    """The VAE of a checkpoint, rebuilt from its own hparams alone, on the CPU, in eval mode;
    a ConfigError if the file is missing or not a checkpoint of train.py, naming the newest
    intact checkpoint beside a damaged one."""
    allowed = "a checkpoint of train.py, e.g. ckpt_path=outputs/DATE/TIME/checkpoints/last.ckpt"
    if not ckpt_path or not Path(ckpt_path).is_file():
        raise ConfigError("ckpt_path", ckpt_path, f"{allowed} (no such file)")
    try:
        model = VAE.load_from_checkpoint(ckpt_path, map_location="cpu")
    except ConfigError:  # the file names code that loading would run: said as it is
        raise
    except Exception as error:  # whatever the file holds instead, the fix is another ckpt_path
        reason = f"{type(error).__name__} on loading"
        if saved_hparams(ckpt_path) is not None:  # a whole checkpoint, not one of this VAE
            raise ConfigError("ckpt_path", ckpt_path, f"{allowed} ({reason})") from None
        damaged = Path(ckpt_path)
        intact = newest_intact_checkpoint(damaged.parent, damaged)
        fix = f"the newest intact one beside it is {intact[0]}" if intact else allowed
        raise ConfigError(
            "ckpt_path",
            ckpt_path,
            f"the file is damaged, truncated or not a checkpoint ({reason}); {fix}",
        ) from None
    return model.eval()


def run_data_config(ckpt_path: str | Path, needed_by: str) -> DictConfig:
    """The data config of the run that wrote a checkpoint, from `<run dir>/.hydra/config.yaml`,
    with data paths taken from where that run was started (its `.hydra/hydra.yaml`)."""
    run_dir = run_dir_of(ckpt_path)
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise ConfigError(
            "ckpt_path",
            str(ckpt_path),
            f"{needed_by} needs the run's data: a checkpoint in <run dir>/checkpoints/ with "
            f"<run dir>/.hydra/config.yaml beside it (not found: {saved}), or name the data, "
            "e.g. data=shapes",
        )
    run_cfg = OmegaConf.load(saved)
    hydra_cfg = run_dir / ".hydra" / "hydra.yaml"
    if hydra_cfg.is_file():
        run_cfg.paths.root_dir = OmegaConf.load(hydra_cfg).hydra.runtime.cwd
    # the callers instantiate it; data of the user's own code is named on the command line
    check_targets("data", run_cfg.data, DATA_MODULES, "; or name the data, e.g. data=shapes")
    return run_cfg.data
