"""Procedural 2-D shapes in the spirit of dSprites, rendered deterministically with no files.

Five factors, on the dSprites grid: shape (square, ellipse, heart), scale (6 values), rotation
(40 angles), and x and y position (32 each): 3 * 6 * 40 * 32 * 32 = 737,280 distinct images.
Each image keeps the grid indices of its factors as its label, so later metrics can use them.
With a `cache_dir`, the images are rendered once and cached, as the decoded image sets are.
"""

import math
from pathlib import Path
from typing import Any

import torch

from vae_lightning.data.cache import images_problem, load_checked, save_images
from vae_lightning.data.in_memory import (
    InMemoryDataModule,
    InMemoryImages,
    split_off,
    to_unit_float,
)
from vae_lightning.progress import Progress

SHAPES = ("square", "ellipse", "heart")
FACTOR_NAMES = ("shape", "scale", "rotation", "pos_x", "pos_y")
FACTOR_SIZES = (len(SHAPES), 6, 40, 32, 32)
GRID_SIZE = math.prod(FACTOR_SIZES)

SUPERSAMPLING = 2  # sub-pixels per side: anti-aliased edges instead of jagged binary ones
# Part of the cache files' names: a change to what render draws for a grid point must change
# it, so that caches of the old pixels are not used.
RENDERING = 1
# Rendered at a time: few enough that the intermediate tensors stay in the CPU's caches (with
# one thread, 256 images of 32x32 at a time render 5 times as fast as 2048).
SUBPIXELS_AT_A_TIME = 2**20


def factor_values(indices: torch.Tensor) -> torch.Tensor:
    """Grid indices (N, 5) to values: shape id, scale in [0.5, 1], angle in radians, x and y in
    [0.2, 0.8] as fractions of the image width, measured from the top left."""
    shape, scale, rotation, pos_x, pos_y = indices.T.float()
    return torch.stack(
        [
            shape,
            0.5 + 0.5 * scale / (FACTOR_SIZES[1] - 1),
            2 * math.pi * rotation / FACTOR_SIZES[2],
            0.2 + 0.6 * pos_x / (FACTOR_SIZES[3] - 1),
            0.2 + 0.6 * pos_y / (FACTOR_SIZES[4] - 1),
        ],
        dim=1,
    )


def _square(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.maximum(u.abs(), v.abs()) <= 0.8


def _ellipse(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u**2 + (v / 0.55) ** 2 <= 1


def _heart(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    hu, hv = 1.15 * u, 1.15 * v + 0.15  # the classic heart curve, centred and scaled to ~[-1, 1]
    return (hu**2 + hv**2 - 1) ** 3 - hu**2 * hv**3 <= 0


# Whether the shape-local point (u, v), with v pointing up, lies inside: one test per shape id.
INSIDE = (_square, _ellipse, _heart)


def render(indices: torch.Tensor, image_size: int, chunk: int | None = None) -> torch.Tensor:
    """uint8 images (N, 1, S, S) of the shapes with factor grid indices (N, 5).

    Each shape's images are rendered apart, with its own test only, `chunk` at a time (None:
    SUBPIXELS_AT_A_TIME sub-pixels' worth)."""
    n_sub = image_size * SUPERSAMPLING
    chunk = chunk or max(1, SUBPIXELS_AT_A_TIME // n_sub**2)
    grid = (torch.arange(n_sub, dtype=torch.float32) + 0.5) / n_sub
    py, px = torch.meshgrid(grid, grid, indexing="ij")
    values = factor_values(indices)
    images = torch.empty(len(indices), 1, image_size, image_size, dtype=torch.uint8)
    description = f"rendering shapes at {image_size}x{image_size}"
    with Progress(description, len(indices), "images") as progress:
        for shape_id, inside in enumerate(INSIDE):
            for part in (indices[:, 0] == shape_id).nonzero().squeeze(1).split(chunk):
                _, scale, angle, cx, cy = (f.view(-1, 1, 1) for f in values[part].T)
                radius = 0.2 * scale
                dx, dy = (px - cx) / radius, (cy - py) / radius  # y flipped: rows grow downwards
                cos, sin = angle.cos(), angle.sin()
                u, v = cos * dx + sin * dy, -sin * dx + cos * dy  # rotate by -angle: shape frame
                coverage = inside(u, v).float()
                coverage = coverage.view(-1, image_size, SUPERSAMPLING, image_size, SUPERSAMPLING)
                images[part, 0] = (coverage.mean(dim=(2, 4)) * 255).round().to(torch.uint8)
                progress.advance(len(part))
    return images


def sample_factor_indices(n: int | None, seed: int) -> torch.Tensor:
    """n distinct points of the factor grid (all of it when n is None), in a seeded random order."""
    generator = torch.Generator().manual_seed(seed)
    flat = torch.randperm(GRID_SIZE, generator=generator)[: n or GRID_SIZE]
    return torch.stack(torch.unravel_index(flat, FACTOR_SIZES), dim=1)


class ShapesDataModule(InMemoryDataModule):
    """`size` images from the factor grid (None: all 737,280), split into train, val and test;
    labelled by their factor indices. With `cache_dir`, rendered once into a cache file there
    (one per size, image size and seed) that later runs load; without, rendered at every run.
    The class is the shape: `labelled` keeps that many shapes known, balanced over the three."""

    name = "shapes"  # LightningDataModule's; the sample metrics find their feature network by it
    label_names = FACTOR_NAMES
    labels_are_factors = True
    factor_sizes = FACTOR_SIZES
    class_label, class_names = "shape", SHAPES

    def __init__(
        self,
        size: int | None = 20_000,
        image_size: int = 32,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int = 500,
        cache_dir: str | None = None,
        labelled: int | None = None,
    ):
        super().__init__(batch_size, eval_batch_size, labelled=labelled, seed=seed)
        self.size, self.image_size = size, image_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.cache_dir = None if cache_dir is None else Path(cache_dir)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (1, self.image_size, self.image_size)

    def cache_path(self) -> Path:
        size = "all" if self.size is None else self.size
        name = f"{size}-1x{self.image_size}x{self.image_size}-seed{self.seed}-r{RENDERING}.pt"
        return self.cache_dir / "shapes" / name

    def cache_problem(self, data: Any) -> str | None:
        """What is wrong with the contents of a cache file, or None (see cache.images_problem),
        also when it holds another number of images than its name says."""
        wrong = images_problem(data, self.image_shape)
        expected = (min(self.size or GRID_SIZE, GRID_SIZE), len(FACTOR_SIZES))
        if wrong is None and tuple(data["labels"].shape) != expected:
            return f"labels of shape {tuple(data['labels'].shape)}, not {expected}"
        return wrong

    def rendered(self) -> InMemoryImages:
        """All the images, rendered now (and written to the cache file, with a cache_dir)."""
        factors = sample_factor_indices(self.size, self.seed)
        images = InMemoryImages(render(factors, self.image_size), factors)
        if self.cache_dir is not None:
            save_images(self.cache_path(), images)
        return images

    def load_all(self) -> InMemoryImages:
        """All the images: from the cache file, or rendered now and cached (also when the file
        is damaged: see load_checked)."""
        if self.cache_dir is not None:
            data = load_checked(self.cache_path(), self.cache_problem)
            if data is not None:
                return InMemoryImages(data["images"], data["labels"])
        return self.rendered()

    def prepare_data(self) -> None:
        if self.cache_dir is not None and not self.cache_path().is_file():
            self.rendered()

    def load_splits(self) -> dict[str, InMemoryImages]:
        everything = self.load_all()
        n_test = round(self.test_fraction * len(everything))
        n_val = round(self.val_fraction * len(everything))
        rest, test = split_off(everything, n_test, self.seed)
        train, val = split_off(rest, n_val, self.seed + 1)
        return {"train": train, "val": val, "test": test}

    def images_with_factors(self, factors: torch.Tensor) -> torch.Tensor:
        """Images (n, 1, S, S) in [0, 1], as the model sees them, of the factor indices (n, 5):
        what the BetaVAE and FactorVAE scores draw their pairs and batches from."""
        return to_unit_float(render(factors, self.image_size))
