"""The likelihood p(x|z): how an image is distributed given the decoder's output. `model.likelihood`
picks one (conf/model/likelihood/, one file here each)."""

import torch
from torch import nn


class Likelihood(nn.Module):
    """p(x|z) from the decoder's output parameters.

    `out_channels`: the channels of parameters the decoder gives per image (one per image channel
    unless the likelihood needs more); `log_prob(params, x)`: log p(x|z) summed over an image's
    pixels, params (..., out_channels, H, W) with any leading sample dims that x (batch, C, H, W)
    broadcasts over; `mean(params)`: the image p(x|z) stands for, in [0, 1], for pictures.
    `bits_per_dim`: a likelihood of discrete 8-bit values, whose NLLs are also reported in bits
    per dimension comparable to the literature's; `logged()`: values of its own to log in
    training (a learned sigma).
    """

    bits_per_dim: bool = False

    def __init__(self, image_shape: tuple[int, int, int]):
        super().__init__()
        self.out_channels = image_shape[0]

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logged(self) -> dict[str, torch.Tensor]:
        return {}
