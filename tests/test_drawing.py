"""The drawing functions on a small untrained VAE: layout, content and numbers."""

import pytest
import torch

from tests.helpers import part
from vae_lightning.drawing import (
    interpolation_grid,
    kl_figure,
    latent_map_figure,
    principal_components,
    reconstruction_grid,
    rendered,
    sample_grid,
    traversal_grid,
)
from vae_lightning.module import VAE

torch.manual_seed(0)
NETWORK = part("network", "conv", hidden_dims=[4, 8], dense_dim=16)
MODEL = VAE(image_shape=(1, 16, 16), network=NETWORK, latent_dim=3).eval()
IMAGES = torch.rand(6, 1, 16, 16)


def cell(grid: torch.Tensor, row: int, col: int, size: int = 16) -> torch.Tensor:
    """The image in a grid cell (1 pixel of padding around each), first channel."""
    top, left = 1 + row * (size + 1), 1 + col * (size + 1)
    return grid[0, top : top + size, left : left + size]


def side(n: int, size: int = 16) -> int:
    return n * (size + 1) + 1


@torch.no_grad()
def test_traversal_rows_sweep_one_dimension_each_around_the_centre():
    centre = torch.tensor([0.5, -1.0, 2.0])
    grid = traversal_grid(MODEL, centre, dims=[2, 0], span=3.0, steps=5)
    assert grid.shape == (3, side(2), side(5))
    for row, dim in enumerate([2, 0]):
        for col, offset in enumerate([-3.0, -1.5, 0.0, 1.5, 3.0]):
            z = centre.clone()
            z[dim] += offset
            expected = MODEL.decode(z[None])[0, 0]
            torch.testing.assert_close(cell(grid, row, col), expected, atol=1e-6, rtol=0)


@torch.no_grad()
def test_interpolation_rows_start_and_end_at_the_images_and_their_means():
    # pairs (0, 1) and (2, 3); the odd fifth image is left out
    grid = interpolation_grid(MODEL, IMAGES[:5], steps=4)
    assert grid.shape == (3, side(2), side(6))
    mu, _ = MODEL.encode(IMAGES)
    for row in range(2):
        torch.testing.assert_close(cell(grid, row, 0), IMAGES[2 * row, 0])
        torch.testing.assert_close(cell(grid, row, 5), IMAGES[2 * row + 1, 0])
        for col, z in ((1, mu[2 * row]), (4, mu[2 * row + 1])):
            expected = MODEL.decode(z[None])[0, 0]
            torch.testing.assert_close(cell(grid, row, col), expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_reconstruction_and_sample_grids_have_eight_images_to_a_row():
    grid = reconstruction_grid(MODEL, IMAGES)  # 6 pairs: a row of 8 images and a row of 4
    assert grid.shape == (3, side(2), side(8))
    torch.testing.assert_close(cell(grid, 1, 0), IMAGES[4, 0])
    torch.testing.assert_close(cell(grid, 1, 1), MODEL.reconstruct(IMAGES[4:5])[0, 0])
    samples = sample_grid(MODEL, 17, torch.Generator().manual_seed(0))
    assert samples.shape == (3, side(3), side(8))
    z = torch.randn(17, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(cell(samples, 2, 0), MODEL.decode(z[16:])[0, 0])
    cooled = sample_grid(MODEL, 17, torch.Generator().manual_seed(0), temperature=0.5)
    torch.testing.assert_close(cell(cooled, 2, 0), MODEL.decode(0.5 * z[16:])[0, 0])


def test_principal_components_find_the_widest_directions():
    points = torch.randn(500, 3) * torch.tensor([0.1, 5.0, 1.0])
    xy = principal_components(points)
    assert xy.shape == (500, 2)
    assert xy[:, 0].std().item() == pytest.approx(points[:, 1].std().item(), rel=1e-4)
    assert xy[:, 1].std().item() == pytest.approx(points[:, 2].std().item(), rel=1e-2)


@pytest.mark.parametrize(
    ("latent_dim", "labels", "names"),
    [
        (1, torch.randint(0, 10, (40,)), ["label"]),  # 1-D latents drawn on a line, class labels
        (2, torch.randint(0, 10, (40,)), ["label"]),
        (6, torch.randint(0, 3, (40, 5)), list("abcde")),
    ],  # PCA, one panel per factor
)
def test_latent_map_draws_one_panel_per_label_column(latent_dim, labels, names):
    image = rendered(latent_map_figure(torch.randn(40, latent_dim), labels, names))
    panels = 1 if labels.ndim == 1 else labels.shape[1]
    assert image.shape == (3, 300, round(360 * panels))
    assert 0 <= image.min() < 0.5 < image.max() <= 1  # something drawn on white


def test_kl_figure_is_an_rgb_image():
    image = rendered(kl_figure(torch.tensor([0.1, 2.0, 0.0, 1.0])))
    assert image.shape == (3, 300, 400) and image.min() < 0.5


def test_kl_figure_of_layers_draws_one_bar_per_dimension_of_every_layer():
    one = rendered(kl_figure(torch.tensor([0.1, 2.0, 0.0, 1.0])))
    layers = rendered(kl_figure([torch.tensor([0.1, 2.0]), torch.tensor([0.0, 1.0])]))
    assert layers.shape == one.shape  # four bars either way
    assert not torch.equal(layers, one)  # the layers in their own colours and names
