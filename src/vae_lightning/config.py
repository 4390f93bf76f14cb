"""Config checks at the point where a config enters, each failure one line naming key and fix."""

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vae_lightning.elbo import LIKELIHOODS
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
    ("model.optimizer.lr", lambda v: _is_number(v) and v > 0, "a number > 0, e.g. 1e-3"),
    ("data.batch_size", _positive_int, "a positive integer, e.g. data.batch_size=128"),
    ("trainer.max_epochs", _is_int, "an integer (-1 for no limit), e.g. trainer.max_epochs=10"),
]

SAMPLE_MODES = ("prior", "traverse", "interpolate", "reconstruct")

# The rules of sample.py's config (conf/sample.yaml).
SAMPLE_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("mode", lambda v: v in SAMPLE_MODES, f"one of {', '.join(SAMPLE_MODES)}"),
    ("n", _positive_int, "a positive integer, e.g. n=64"),
    ("steps", lambda v: _is_int(v) and v >= 2, "an integer >= 2, e.g. steps=9"),
    ("span", lambda v: _is_number(v) and v > 0, "a number > 0, e.g. span=3"),
]


def check_config(cfg: DictConfig, rules: list[tuple[str, Callable, str]] = RULES) -> None:
    """Raise ConfigError for the first value in `cfg` that breaks a rule (train.py's by default)."""
    for key, test, allowed in rules:
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
