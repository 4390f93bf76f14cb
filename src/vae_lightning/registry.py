"""The classes a config read from a file may name: a checkpoint's hyperparameters, a Hub folder's
config.json, a run's saved .hydra/config.yaml. Hydra's `instantiate` calls whatever `_target_`
names (`torch.save`, `os.system`, ...), so a downloaded model could run code of its author's
choosing on loading; as on the Hub without `trust_remote_code`, loading a file runs none.

A family of parts is the subclasses of one base class defined in one package: the project's
own parts are found by their base class, so a new objective or data module needs no entry here.
What the user composes from conf/ and the command line is the user's own choice, and unchecked.
"""

import importlib
import pydoc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from omegaconf import DictConfig, ListConfig, OmegaConf

from vae_lightning.errors import ConfigError
from vae_lightning.likelihoods import Likelihood
from vae_lightning.networks import Network
from vae_lightning.objectives import Objective
from vae_lightning.posteriors import Posterior
from vae_lightning.priors import Prior


@dataclass(frozen=True)
class Family:
    """The classes derived from `base` defined in a module of `package`."""

    package: str
    base: type

    def holds(self, target: str) -> bool:
        # The name is checked before anything is imported; the object it names after, since a
        # name inside the package can still reach outside (`package.module.os.system`).
        if not target.startswith(f"{self.package}."):
            return False
        try:  # pydoc's, not Hydra's get_object, which logs an error for a name that is not there
            found = pydoc.locate(target)
        except pydoc.ErrorDuringImport:
            return False
        return (
            isinstance(found, type)
            and issubclass(found, self.base)
            and found is not self.base
            and self._defines(found)
        )

    def _defines(self, cls: type) -> bool:
        return f"{cls.__module__}.".startswith(f"{self.package}.") and "._" not in cls.__module__

    def members(self) -> list[str]:
        """The dotted names of the family's classes, as a config names them."""
        importlib.import_module(self.package)
        found, stack = set(), self.base.__subclasses__()
        while stack:
            cls = stack.pop()
            stack.extend(cls.__subclasses__())
            if self._defines(cls) and not cls.__name__.startswith("_"):
                found.add(f"{cls.__module__}.{cls.__qualname__}")
        return sorted(found)


OPTIMIZERS = Family("torch.optim", torch.optim.Optimizer)
SCHEDULERS = Family("torch.optim.lr_scheduler", torch.optim.lr_scheduler.LRScheduler)
OBJECTIVES = Family("vae_lightning.objectives", Objective)
NETWORKS = Family("vae_lightning.networks", Network)
POSTERIORS = Family("vae_lightning.posteriors", Posterior)
PRIORS = Family("vae_lightning.priors", Prior)
LIKELIHOODS = Family("vae_lightning.likelihoods", Likelihood)
DATA_MODULES = Family("vae_lightning.data", L.LightningDataModule)


def _targets(config: Any, key: str) -> Iterator[tuple[str, Any]]:
    """Every `_target_` in a nested config of plain dicts and lists, with its dotted key: Hydra
    instantiates the nested ones too."""
    if isinstance(config, dict):
        for name, value in config.items():
            if name == "_target_":
                yield f"{key}._target_", value
            else:
                yield from _targets(value, f"{key}.{name}")
    elif isinstance(config, list | tuple):
        for index, value in enumerate(config):
            yield from _targets(value, f"{key}[{index}]")


def check_targets(key: str, config: Any, family: Family | None, fix: str = "") -> None:
    """A ConfigError naming the first `_target_` in `config` (read from a file) that is not a
    class of `family` (None: no target is allowed there), before any of them is called.
    Interpolations are left unresolved: a target that is one is refused, whatever it would be.
    `fix`: another way out, added to the message."""
    if isinstance(config, DictConfig | ListConfig):
        config = OmegaConf.to_container(config, resolve=False)
    for target_key, target in _targets(config, key):
        if family is None:
            raise ConfigError(target_key, target, "a file's config names no code here")
        if not isinstance(target, str) or not family.holds(target):
            allowed = ", ".join(family.members())
            raise ConfigError(target_key, target, f"a file's config may name one of {allowed}{fix}")


def checkpoint_hyperparameters(
    checkpoint_path: str | Path | IO, weights_only: bool | None = None
) -> dict:
    """The hyperparameters a checkpoint saved, read as Lightning reads the file (locally or
    through fsspec; `weights_only` None: torch's default, the safe unpickler); a file object is
    left where it was, for Lightning to read in turn."""
    if hasattr(checkpoint_path, "read"):
        start = checkpoint_path.tell()
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=weights_only)
        checkpoint_path.seek(start)
    else:
        with get_filesystem(checkpoint_path).open(str(checkpoint_path), "rb") as file:
            checkpoint = torch.load(file, map_location="cpu", weights_only=weights_only)
    return dict(checkpoint.get("hyper_parameters") or {})


def check_model_config(hparams: dict[str, Any]) -> None:
    """The VAE's arguments read from a checkpoint or a Hub folder's config.json: each part one of
    the project's, the optimiser and scheduler torch's, and no code named elsewhere."""
    families = {
        "network": NETWORKS,
        "posterior": POSTERIORS,
        "prior": PRIORS,
        "likelihood": LIKELIHOODS,
        "objective": OBJECTIVES,
        "optimizer": OPTIMIZERS,
        "scheduler": SCHEDULERS,
    }
    for name, value in hparams.items():
        check_targets(f"model.{name}", value, families.get(name))
