"""The commands: `vae-train`, `vae-eval`, `vae-sample` and `vae-export` once the package is
installed, and train.py, eval.py, sample.py and export.py at the top of a checkout. Each parses
its Hydra config (conf/, shipped in the package as vae_lightning.conf) and calls one function."""

import sys
import time
from importlib.resources import files
from pathlib import Path

import hydra
from omegaconf import DictConfig

from vae_lightning.cli import evaluate, exit_on_config_error, prepare_command_line, train
from vae_lightning.config import optimized_value
from vae_lightning.export import export
from vae_lightning.phases import startup_phases
from vae_lightning.sampling import sample
from vae_lightning.sweep import record_failure_in_multirun

CONFIG_DIR = Path(str(files("vae_lightning.conf")))
CONFIG_PATH = "pkg://vae_lightning.conf"
IMPORTS_DONE_AT = time.perf_counter()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
@exit_on_config_error
@record_failure_in_multirun
def _train(cfg: DictConfig) -> float | None:
    return optimized_value(cfg, train(cfg, startup_phases(IMPORTS_DONE_AT)))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
@exit_on_config_error
def _evaluate(cfg: DictConfig) -> None:
    evaluate(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="sample")
@exit_on_config_error
def _sample(cfg: DictConfig) -> None:
    sample(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="export")
@exit_on_config_error
def _export(cfg: DictConfig) -> None:
    export(cfg)


def _run(config_name: str, main) -> None:
    sys.argv[1:] = prepare_command_line(CONFIG_DIR, config_name, sys.argv[1:])
    main()


def train_command() -> None:
    """Train a VAE: `vae-train [group=option ...] [key=value ...]`; see conf/train.yaml."""
    _run("train", _train)


def eval_command() -> None:
    """Evaluate a checkpoint: `vae-eval ckpt_path=PATH [data=NAME] [eval.iwae_k=K]`."""
    _run("eval", _evaluate)


def sample_command() -> None:
    """Draw images from a checkpoint: `vae-sample ckpt_path=PATH mode=prior|traverse|...`."""
    _run("sample", _sample)


def export_command() -> None:
    """Write a checkpoint as a folder to share: `vae-export ckpt_path=PATH out=DIR`."""
    _run("export", _export)
