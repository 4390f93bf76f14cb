"""Encoders q(z|x) and decoders p(x|z), built from the image shape (C, H, W) and the latent size.

An encoder maps images to (mu, log sigma^2) of a diagonal Gaussian; a decoder maps latents to the
parameters of p(x|z), one value per pixel (logits or means, as the likelihood reads them).
"""

import math
from itertools import pairwise

import torch
from torch import nn

from vae_lightning.options import conv_downsampling

# log sigma^2 outside [-30, 20] means sigma below 3e-7 or above 2e4: no useful posterior lives
# there, and exp() of it is where overflow and NaN gradients start.
LOGVAR_RANGE = (-30.0, 20.0)


class GaussianHead(nn.Module):
    """A linear layer giving mu and a clamped log sigma^2."""

    def __init__(self, in_features: int, latent_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_features, 2 * latent_dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.linear(h).chunk(2, dim=-1)
        return mu, logvar.clamp(*LOGVAR_RANGE)


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in pairwise(sizes):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, hidden_dims: list[int]):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), mlp([math.prod(image_shape), *hidden_dims]))
        self.head = GaussianHead(hidden_dims[-1], latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.body(x))


class MLPDecoder(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, hidden_dims: list[int]):
        super().__init__()
        self.net = nn.Sequential(
            mlp([latent_dim, *reversed(hidden_dims)]),
            nn.Linear(hidden_dims[0], math.prod(image_shape)),
            nn.Unflatten(1, tuple(image_shape)),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class ConvEncoder(nn.Module):
    """Stride-2 4x4 convolutions (each halves H and W), then a dense layer and the Gaussian head."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dim: int,
        hidden_dims: list[int],
        dense_dim: int,
    ):
        super().__init__()
        height, width = conv_downsampling(image_shape, len(hidden_dims))
        channels = [image_shape[0], *hidden_dims]
        layers: list[nn.Module] = []
        for c_in, c_out in pairwise(channels):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        flat = hidden_dims[-1] * height * width
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, dense_dim), nn.ReLU())
        self.head = GaussianHead(dense_dim, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.body(x))


class ConvDecoder(nn.Module):
    """The mirror of ConvEncoder: dense layers, then stride-2 transposed convolutions."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dim: int,
        hidden_dims: list[int],
        dense_dim: int,
    ):
        super().__init__()
        height, width = conv_downsampling(image_shape, len(hidden_dims))
        channels = [*reversed(hidden_dims), image_shape[0]]
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, dense_dim),
            nn.ReLU(),
            nn.Linear(dense_dim, channels[0] * height * width),
            nn.ReLU(),
            nn.Unflatten(1, (channels[0], height, width)),
        ]
        for c_in, c_out in pairwise(channels):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        self.net = nn.Sequential(*layers[:-1])  # no activation on the output parameters

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def build_networks(
    network: str,
    image_shape: tuple[int, int, int],
    latent_dim: int,
    hidden_dims: list[int],
    dense_dim: int,
) -> tuple[nn.Module, nn.Module]:
    """The (encoder, decoder) pair named by `network`: "mlp" or "conv"."""
    if network == "mlp":
        return (
            MLPEncoder(image_shape, latent_dim, hidden_dims),
            MLPDecoder(image_shape, latent_dim, hidden_dims),
        )
    return (
        ConvEncoder(image_shape, latent_dim, hidden_dims, dense_dim),
        ConvDecoder(image_shape, latent_dim, hidden_dims, dense_dim),
    )
