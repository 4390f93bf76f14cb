"""p(x|z) = N(x; mean, sigma^2 I) with a fixed sigma: the squared error, with its constant."""

import math

import torch

from vae_lightning.checks import positive, require
from vae_lightning.elbo import LOG_2PI, PIXEL_DIMS
from vae_lightning.likelihoods import Likelihood


class FixedGaussian(Likelihood):
    """p(x|z) = N(x; mean, sigma^2 I) with a fixed sigma, constant included so nats compare; a
    sigma set by hand weighs the reconstruction against the KL."""

    def __init__(self, image_shape: tuple[int, int, int], sigma: float = 0.1):
        super().__init__(image_shape)
        require(positive(sigma), "model.likelihood.sigma", sigma, "a number > 0, e.g. 0.1")
        self.sigma = sigma

    def log_prob(self, mean: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        log_density = -0.5 * ((x - mean) / self.sigma) ** 2 - math.log(self.sigma) - 0.5 * LOG_2PI
        return log_density.sum(PIXEL_DIMS)

    def mean(self, mean: torch.Tensor) -> torch.Tensor:
        return mean.clamp(0, 1)
