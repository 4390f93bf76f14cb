"""The fully connected encoder/decoder pair (pytorch/examples' VAE: 784-400-20 on 28x28)."""

import math
from collections.abc import Sequence
from itertools import pairwise

from torch import nn

from vae_lightning.checks import positive_ints, require
from vae_lightning.networks import EncoderDecoder


def relu_layers(sizes: Sequence[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for n_in, n_out in pairwise(sizes):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return layers


class MLPNetwork(EncoderDecoder):
    """Encoder: the flattened image through ReLU layers of `hidden_dims`, then the posterior's
    parameters; decoder: the reverse, to the likelihood's `out_channels` per pixel. With
    `n_classes`, the image's one-hot class channels are flattened in too, and the decoder reads
    the one-hot class beside z."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dim: int,
        encoder_outputs: int,
        out_channels: int,
        hidden_dims: Sequence[int] = (400,),
        n_classes: int = 0,
    ):
        super().__init__()
        require(
            positive_ints(hidden_dims),
            "model.network.hidden_dims",
            hidden_dims,
            "a non-empty list of positive integers, e.g. [400]",
        )
        self.n_classes = n_classes
        channels, height, width = image_shape
        inputs = (channels + n_classes) * height * width
        self.encoder = nn.Sequential(
            nn.Flatten(),
            *relu_layers([inputs, *hidden_dims]),
            nn.Linear(hidden_dims[-1], encoder_outputs),
        )
        output_shape = (out_channels, *image_shape[1:])
        self.decoder = nn.Sequential(
            *relu_layers([latent_dim + n_classes, *reversed(hidden_dims)]),
            nn.Linear(hidden_dims[0], math.prod(output_shape)),
            nn.Unflatten(1, output_shape),
        )
