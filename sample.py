"""Draw images from a trained VAE: `python sample.py ckpt_path=PATH mode=prior|traverse|interpolate|
reconstruct n=64 out=DIR`; see conf/sample.yaml."""

import hydra
from omegaconf import DictConfig

from vae_lightning.cli import exit_on_config_error
from vae_lightning.sampling import sample


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
@exit_on_config_error
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()
