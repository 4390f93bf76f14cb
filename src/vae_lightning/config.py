"""Config checks at the point where a config enters, each failure one line naming key and fix."""

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vae_lightning.elbo import LIKELIHOODS, SIGMA_PER
from vae_lightning.networks import NETWORKS, conv_downsampling


class ConfigError(ValueError):
    """A config value that cannot work; the message is the whole story, shown without traceback."""

    def __init__(self, key: str, value: Any, allowed: str):
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _positive_ints(value: Any) -> bool:
    return OmegaConf.is_list(value) and len(value) > 0 and all(map(_positive_int, value))


# (key, test, what is allowed); a key missing from the config is not checked.
RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("model.latent_dim", _positive_int, "a positive integer, e.g. model.latent_dim=16"),
    ("model.beta", lambda v: _is_number(v) and v >= 0, "a number >= 0, e.g. model.beta=1"),
    ("model.likelihood", lambda v: v in LIKELIHOODS, f"one of {', '.join(LIKELIHOODS)}"),
    ("model.network", lambda v: v in NETWORKS, f"one of {', '.join(NETWORKS)}"),
    ("model.hidden_dims", _positive_ints, "a non-empty list of positive integers, e.g. [32,64]"),
    ("model.dense_dim", _positive_int, "a positive integer, e.g. model.dense_dim=256"),
    ("model.gaussian_sigma", lambda v: _is_number(v) and v > 0, "a number > 0, e.g. 0.1"),
    ("model.gaussian_sigma_per", lambda v: v in SIGMA_PER, f"one of {', '.join(SIGMA_PER)}"),
    ("model.kl_warmup", lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0: no warm-up)"),
    ("model.kl_warmup_unit", lambda v: v in ("steps", "epochs"), "one of steps, epochs"),
    ("model.free_bits", lambda v: _is_number(v) and v >= 0, "a number >= 0 of nats, e.g. 0.5"),
    ("model.optimizer.lr", lambda v: _is_number(v) and v > 0, "a number > 0, e.g. 1e-3"),
    ("data.batch_size", _positive_int, "a positive integer, e.g. data.batch_size=128"),
    ("trainer.max_epochs", _is_int, "an integer (-1 for no limit), e.g. trainer.max_epochs=10"),
    ("eval.iwae_k", _positive_int, "a positive integer of importance samples, e.g. 1000"),
    ("eval.max_rows", _positive_int, "a positive integer of decoder rows per pass, e.g. 8192"),
]


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value in `cfg` that breaks a rule."""
    for key, test, allowed in RULES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not test(value):
            raise ConfigError(key, value, allowed)


def check_image_shape(cfg: DictConfig, image_shape: tuple[int, int, int]) -> None:
    """The conv network halves the image once per hidden layer: the size must allow it."""
    if cfg.model.network != "conv":
        return
    try:
        conv_downsampling(image_shape, len(cfg.model.hidden_dims))
    except ValueError as error:
        raise ConfigError("model.hidden_dims", list(cfg.model.hidden_dims), str(error)) from None
