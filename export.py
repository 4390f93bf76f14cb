"""Write a trained VAE as a folder to share: `python export.py ckpt_path=PATH out=DIR`; see
conf/export.yaml. `VAE.from_pretrained(DIR)` loads it; the folder is a Hugging Face Hub repo."""

from vae_lightning.commands import export_command

if __name__ == "__main__":
    export_command()
