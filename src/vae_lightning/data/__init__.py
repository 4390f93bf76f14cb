from vae_lightning.data.images import ImageDataModule
from vae_lightning.data.in_memory import InMemoryDataModule, InMemoryImages
from vae_lightning.data.shapes import ShapesDataModule

__all__ = ["ImageDataModule", "InMemoryDataModule", "InMemoryImages", "ShapesDataModule"]
