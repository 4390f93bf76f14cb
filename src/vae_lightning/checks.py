"""Tests of config values, shared by the command-line checks (config.py) and the parts that
check their own arguments where they are built; torch-free, as config.py must stay."""

from typing import Any

from omegaconf import OmegaConf

from vae_lightning.errors import ConfigError


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def positive_int(value: Any) -> bool:
    return is_int(value) and value > 0


def non_negative(value: Any) -> bool:
    return is_number(value) and value >= 0


def positive(value: Any) -> bool:
    return is_number(value) and value > 0


def positive_ints(value: Any) -> bool:
    is_list = OmegaConf.is_list(value) or isinstance(value, list | tuple)
    return is_list and len(value) > 0 and all(map(positive_int, value))


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """A ConfigError naming `key` and what it allows, unless `ok`."""
    if not ok:
        raise ConfigError(key, value, allowed)
