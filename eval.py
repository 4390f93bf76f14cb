"""Evaluate a checkpoint: `python eval.py ckpt_path=PATH [data=NAME] [eval.iwae_k=K]`; see
conf/eval.yaml. Prints a table and writes metrics.json in the run directory of the evaluation."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from vae_lightning.cli import evaluate, exit_on_config_error, prepare_command_line


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
@exit_on_config_error
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    sys.argv[1:] = prepare_command_line(Path(__file__).parent / "conf", sys.argv[1:])
    main()
