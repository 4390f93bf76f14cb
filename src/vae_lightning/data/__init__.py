from vae_lightning.data.in_memory import InMemoryDataModule, InMemoryImages
from vae_lightning.data.shapes import ShapesDataModule

__all__ = ["InMemoryDataModule", "InMemoryImages", "ShapesDataModule"]
