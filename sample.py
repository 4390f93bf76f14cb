"""Draw images from a trained VAE: `python sample.py ckpt_path=PATH mode=prior|traverse|interpolate|
reconstruct n=64 out=DIR`; see conf/sample.yaml."""

from vae_lightning.commands import sample_command

if __name__ == "__main__":
    sample_command()
