"""The convolutional encoder/decoder pair: stride-2 4x4 convolutions, each halving the image,
then a dense layer; the decoder mirrors it with transposed convolutions."""

from collections.abc import Sequence
from itertools import pairwise

from torch import nn

from vae_lightning.checks import positive_int, positive_ints, require
from vae_lightning.errors import ConfigError
from vae_lightning.networks import EncoderDecoder
from vae_lightning.options import conv_downsampling


def check_conv_layers(image_shape: tuple[int, int, int], hidden_dims: Sequence[int]) -> None:
    """hidden_dims, a list of channels, one stride-2 layer each, that the image size allows."""
    require(
        positive_ints(hidden_dims),
        "model.network.hidden_dims",
        hidden_dims,
        "a non-empty list of positive integers, e.g. [32,64]",
    )
    try:
        conv_downsampling(image_shape, len(hidden_dims))
    except ValueError as error:
        allowed = f"{error}: fewer layers, or another data.image_size"
        raise ConfigError("model.network.hidden_dims", list(hidden_dims), allowed) from None


class ConvNetwork(EncoderDecoder):
    """Encoder: `hidden_dims` stride-2 convolutions, a dense layer of `dense_dim`, the posterior's
    parameters; decoder: dense layers, then the transposed convolutions back to the likelihood's
    `out_channels`. Image sides must be divisible by 2 ** len(hidden_dims). With `n_classes`,
    the first convolution reads the one-hot class as that many channels more, and the first
    dense layer of the decoder the one-hot class beside z."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dim: int,
        encoder_outputs: int,
        out_channels: int,
        hidden_dims: Sequence[int] = (32, 64),
        dense_dim: int = 256,
        n_classes: int = 0,
    ):
        super().__init__()
        check_conv_layers(image_shape, hidden_dims)
        require(positive_int(dense_dim), "model.network.dense_dim", dense_dim, "e.g. 256")
        self.n_classes = n_classes
        height, width = conv_downsampling(image_shape, len(hidden_dims))
        flat = hidden_dims[-1] * height * width
        layers: list[nn.Module] = []
        for c_in, c_out in pairwise([image_shape[0] + n_classes, *hidden_dims]):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        self.encoder = nn.Sequential(
            *layers,
            nn.Flatten(),
            nn.Linear(flat, dense_dim),
            nn.ReLU(),
            nn.Linear(dense_dim, encoder_outputs),
        )
        channels = [*reversed(hidden_dims), out_channels]
        layers = [
            nn.Linear(latent_dim + n_classes, dense_dim),
            nn.ReLU(),
            nn.Linear(dense_dim, flat),
            nn.ReLU(),
            nn.Unflatten(1, (channels[0], height, width)),
        ]
        for c_in, c_out in pairwise(channels):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        self.decoder = nn.Sequential(*layers[:-1])  # no activation on the output parameters
