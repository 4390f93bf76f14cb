"""Building the model's parts (network, posterior, prior, likelihood, objective) from their
configs (conf/model/<part>/), each checking its own arguments as it is built."""

import inspect
from collections.abc import Callable
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from vae_lightning.errors import user_errors_of_instantiation
from vae_lightning.legacy import migrate_hparams
from vae_lightning.options import part_config

PARTS = ("network", "posterior", "prior", "likelihood", "objective")
# The option of conf/model/<part>/ a model config that names no such part gets.
DEFAULT_OPTIONS = {
    "network": "conv",
    "posterior": "gaussian",
    "prior": "standard",
    "likelihood": "bernoulli",
    "objective": "elbo",
}


def part_or_default(part: str, config: dict[str, Any] | None) -> dict[str, Any]:
    """A part's config as given, or its default option's when none is."""
    return config or part_config(part, DEFAULT_OPTIONS[part])


def build_part(config: dict[str, Any] | DictConfig, **context: Any) -> Any:
    """The part a config names, given those `context` values (image_shape, latent_dim, ...) its
    class's __init__ takes, so each part states what it needs. A ConfigError of its own checks
    comes out as it is (errors.user_errors_of_instantiation)."""
    takes = inspect.signature(get_class(config["_target_"]).__init__).parameters
    given = {key: value for key, value in context.items() if key in takes}
    with user_errors_of_instantiation():
        return instantiate(config, **given, _convert_="all")


def build_parts(
    model: dict[str, Any], image_shape: tuple[int, int, int], encode: Callable
) -> dict[str, Any]:
    """The parts of a model config (the VAE's arguments), by name, each built with what it needs
    of the others: the decoder gives the channels the likelihood reads, the encoder the features
    the posterior reads, the VampPrior encodes with `encode`, a prior over codes has as many as
    the posterior's codebook; a network that can be conditioned gets the classes' number,
    `n_classes` (0: unconditional), as does the objective (M2's classifier), with the images'
    shape."""
    latent_dim = model.get("latent_dim", 10)
    n_classes = model.get("n_classes") or 0
    configs = {part: part_or_default(part, model.get(part)) for part in PARTS}
    likelihood = build_part(configs["likelihood"], image_shape=image_shape)
    posterior = build_part(configs["posterior"], latent_dim=latent_dim)
    network = build_part(
        configs["network"],
        image_shape=image_shape,
        latent_dim=latent_dim,
        out_channels=likelihood.out_channels,
        encoder_outputs=posterior.encoder_outputs,
        n_classes=n_classes,
    )
    prior = build_part(
        configs["prior"],
        latent_dim=latent_dim,
        image_shape=image_shape,
        encode=encode,
        n_codes=getattr(posterior, "n_codes", None),
    )
    objective = build_part(configs["objective"], image_shape=image_shape, n_classes=n_classes)
    return {
        "likelihood": likelihood,
        "posterior": posterior,
        "network": network,
        "prior": prior,
        "objective": objective,
    }


def check_parts(model: DictConfig, image_shape: tuple[int, int, int]) -> None:
    """Build every part of a model config on the meta device, where no memory is allocated and
    nothing is computed: a bad value is refused by the part's own check, in about the time torch
    takes to import, before any run starts. A conditional model is built for two classes, a
    stand-in for the data's, which are known only once the data is."""
    config = OmegaConf.to_container(model, resolve=True)
    if config.get("condition"):
        config["n_classes"] = 2
    with torch.device("meta"):
        # a user's own model config of before the parts builds as the run will build it
        build_parts(migrate_hparams(config), image_shape, encode=None)
