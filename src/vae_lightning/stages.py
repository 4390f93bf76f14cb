"""The VQ-VAE's second stage (model=vqvae_prior): a prior over code maps trained on those of a
first stage (model=vqvae) that `model.first_stage` names. The first stage's parts come from its
checkpoint, read with the registry's checks, and stay frozen; the second stage's checkpoints
hold both stages, so eval.py, sample.py and resume= need only them."""

from pathlib import Path

from omegaconf import DictConfig, open_dict

from vae_lightning.errors import ConfigError
from vae_lightning.module import VAE
from vae_lightning.registry import check_model_config, checkpoint_hyperparameters
from vae_lightning.runs import requested_checkpoint, saved_hparams

# What the second stage takes of the first: all but the prior and the training settings.
FIRST_STAGE_PARTS = ("network", "posterior", "likelihood")
FIRST_STAGE = (*FIRST_STAGE_PARTS, "latent_dim")


def adopt_first_stage(cfg: DictConfig) -> VAE | None:
    """For a model config that names a `first_stage`: its network, posterior, likelihood and
    latent_dim replace the config's (so a checkpoint to resume is compared with the model it
    holds), `first_stage` leaves the config, and the first stage's model is returned, to start
    the second stage from (start_second_stage). A second stage resumed from a checkpoint takes
    them from that checkpoint, and needs no first stage: None then, as for any other model."""
    first_stage = cfg.model.get("first_stage")
    if first_stage is None:
        return None
    resumed = requested_checkpoint(cfg)
    saved = saved_hparams(resumed) if resumed and Path(resumed).is_file() else None
    model = None
    if saved is None:
        model = load_first_stage(first_stage)
        saved = dict(model.hparams)
    adopted = {key: saved[key] for key in FIRST_STAGE}
    check_model_config(adopted)  # read from a file: to be instantiated, they name our parts only
    with open_dict(cfg.model):
        for key in FIRST_STAGE:
            cfg.model[key] = adopted[key]
        del cfg.model["first_stage"]
    return model


def load_first_stage(path: str) -> VAE:
    """The model of a model=vqvae checkpoint (the registry checks the parts it names)."""
    allowed = "a checkpoint of a model=vqvae run, e.g. <run dir>/checkpoints/last.ckpt"
    if not Path(path).is_file():
        raise ConfigError("model.first_stage", path, f"no such file; {allowed}")
    posterior = checkpoint_hyperparameters(path).get("posterior") or {}
    if not str(posterior.get("_target_")).endswith(".VectorQuantizer"):
        raise ConfigError("model.first_stage", path, f"{allowed}: it has no codebook")
    return VAE.load_from_checkpoint(path, map_location="cpu")


def start_second_stage(model: VAE, first_stage: VAE | None) -> None:
    """The first stage's weights and codebook in `model` (when given: a fresh start), and frozen:
    only the prior learns, and the codebook, which follows a learning encoder only, stays."""
    for name in FIRST_STAGE_PARTS:
        part = getattr(model, name)
        if first_stage is not None:
            part.load_state_dict(getattr(first_stage, name).state_dict())
        part.requires_grad_(False)
