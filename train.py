"""Train a VAE: `python train.py [group=option ...] [key=value ...]`; see conf/train.yaml."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from vae_lightning.cli import exit_on_config_error, prepare_command_line, train
from vae_lightning.config import optimized_value
from vae_lightning.sweep import record_failure_in_multirun


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@exit_on_config_error
@record_failure_in_multirun
def main(cfg: DictConfig) -> float | None:
    return optimized_value(cfg, train(cfg))


if __name__ == "__main__":
    sys.argv[1:] = prepare_command_line(Path(__file__).parent / "conf", sys.argv[1:])
    main()
