"""p(x|z) = N(x; mean, sigma^2 I) with sigma learned with the networks (sigma-VAE)."""

import math

import torch
from torch import nn

from vae_lightning.checks import positive, require
from vae_lightning.elbo import LOG_2PI, PIXEL_DIMS
from vae_lightning.likelihoods import Likelihood

SIGMA_PER = ("image", "channel")


class LearnedGaussian(Likelihood):
    """p(x|z) = N(x; mean, sigma^2 I) with sigma a parameter learned with the networks: one sigma
    for every pixel (`per="image"`) or one per channel (`per="channel"`).

    Maximum likelihood in sigma balances the two ELBO terms by itself (sigma-VAE, Rybkin et al.
    2021), where a fixed sigma is a hand-set weight on the reconstruction. sigma is kept above
    `min_sigma`: on near-binary images it would otherwise shrink towards 0 and the density diverge.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        sigma: float = 0.1,
        per: str = "image",
        min_sigma: float = 1e-3,
    ):
        super().__init__(image_shape)
        require(positive(sigma), "model.likelihood.sigma", sigma, "a number > 0, e.g. 0.1")
        require(per in SIGMA_PER, "model.likelihood.per", per, f"one of {', '.join(SIGMA_PER)}")
        shape = (image_shape[0], 1, 1) if per == "channel" else (1, 1, 1)
        self.log_sigma = nn.Parameter(torch.full(shape, math.log(sigma)))
        self.min_log_sigma = math.log(min_sigma)

    def clamped_log_sigma(self) -> torch.Tensor:
        return self.log_sigma.clamp(min=self.min_log_sigma)

    @property
    def sigma(self) -> torch.Tensor:
        return self.clamped_log_sigma().exp()

    def log_prob(self, mean: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        log_sigma = self.clamped_log_sigma()
        log_density = -0.5 * ((x - mean) / log_sigma.exp()) ** 2 - log_sigma - 0.5 * LOG_2PI
        return log_density.sum(PIXEL_DIMS)

    def mean(self, mean: torch.Tensor) -> torch.Tensor:
        return mean.clamp(0, 1)

    def logged(self) -> dict[str, torch.Tensor]:
        return {"gaussian_sigma": self.sigma.detach().mean()}
