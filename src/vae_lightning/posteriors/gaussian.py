"""q(z|x) = N(mu(x), diag sigma^2(x)): the VAE's diagonal Gaussian posterior."""

import torch
from torch import nn

from vae_lightning.elbo import diagonal_gaussian_log_prob, reparameterize
from vae_lightning.posteriors import Posterior

# log sigma^2 outside [-30, 20] means sigma below 3e-7 or above 2e4: no useful posterior lives
# there, and exp() of it is where overflow and NaN gradients start.
LOGVAR_RANGE = (-30.0, 20.0)


class DiagonalGaussian(Posterior):
    """The encoder gives mu and log sigma^2 (clamped to LOGVAR_RANGE), latent_dim of each; z is
    drawn by the reparameterisation trick, z = mu + sigma * eps, so gradients reach both."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.encoder_outputs = 2 * latent_dim

    def gaussian(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return self.gaussian(h)[0]

    def rsample(
        self, h: torch.Tensor, k: int | None = None, stop_posterior_grad: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.gaussian(h)
        z = reparameterize(mu, logvar, k)
        if stop_posterior_grad:
            mu, logvar = mu.detach(), logvar.detach()
        return z, diagonal_gaussian_log_prob(z, mu, logvar)

    def kl(
        self, h: torch.Tensor, z: torch.Tensor, log_q: torch.Tensor, prior: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Closed form per dimension against a prior that has one (N(0, I)); otherwise the Monte
        Carlo estimate log q(z|x) - log p(z) at z, which does not split into dimensions."""
        if prior.analytic_kl:
            kl_per_dim = prior.kl_per_dim(*self.gaussian(h), z)
            return kl_per_dim.sum(dim=-1), kl_per_dim
        return log_q - prior.log_prob(z), None
