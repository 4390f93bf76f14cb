"""Train a VAE: `python train.py [group=option ...] [key=value ...]`; see conf/train.yaml."""

from vae_lightning.commands import train_command

if __name__ == "__main__":
    train_command()
