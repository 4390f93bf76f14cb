"""Evaluate a checkpoint: `python eval.py ckpt_path=PATH [data=NAME] [eval.iwae_k=K]`; see
conf/eval.yaml. Prints a table and writes metrics.json in the run directory of the evaluation."""

import hydra
from omegaconf import DictConfig

from vae_lightning.cli import evaluate, exit_on_config_error


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
@exit_on_config_error
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
