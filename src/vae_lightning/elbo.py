"""The mathematics of the VAE as pure tensor functions: likelihoods, the Gaussian KL and the ELBO.

Conventions used everywhere in this project: every quantity is per sample, summed over pixels and
latent dimensions; averaging over the batch happens only where a loss is formed.
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) = -1/2 sum(1 + log sigma^2 - sigma^2 - mu^2), per sample."""
    return -0.5 * (1 + logvar - logvar.exp() - mu.pow(2)).sum(dim=-1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I), so gradients flow through mu and sigma."""
    return mu + torch.randn_like(mu) * (0.5 * logvar).exp()


class Bernoulli(nn.Module):
    """p(x|z) = Bernoulli(sigmoid(logits)) per pixel; x may be grey values in [0, 1]."""

    def log_prob(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # BCE-with-logits is the numerically stable form of x log p + (1 - x) log(1 - p).
        nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        return -nll.flatten(start_dim=1).sum(dim=1)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)


class FixedGaussian(nn.Module):
    """p(x|z) = N(x; mean, sigma^2 I) with a fixed sigma, constant included so nats compare."""

    def __init__(self, sigma: float = 0.1):
        super().__init__()
        self.sigma = sigma

    def log_prob(self, mean: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        log_density = -0.5 * ((x - mean) / self.sigma) ** 2 - math.log(self.sigma) - 0.5 * LOG_2PI
        return log_density.flatten(start_dim=1).sum(dim=1)

    def mean(self, mean: torch.Tensor) -> torch.Tensor:
        return mean.clamp(0, 1)


LIKELIHOODS = ("bernoulli", "gaussian")


def build_likelihood(name: str, gaussian_sigma: float) -> nn.Module:
    return FixedGaussian(gaussian_sigma) if name == "gaussian" else Bernoulli()


class ELBOTerms(NamedTuple):
    """Per-sample terms: recon = -log p(x|z) and kl = KL(q(z|x) || p(z)); elbo = -(recon + kl)."""

    recon: torch.Tensor
    kl: torch.Tensor

    @property
    def elbo(self) -> torch.Tensor:
        return -(self.recon + self.kl)

    def loss(self, beta: float = 1.0) -> torch.Tensor:
        """The training loss: the batch mean of recon + beta * KL (beta = 1 gives the -ELBO)."""
        return self.recon.mean() + beta * self.kl.mean()


def elbo_terms(
    likelihood: nn.Module,
    x: torch.Tensor,
    decoder_output: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
) -> ELBOTerms:
    """One-sample Monte Carlo estimate of -E_q[log p(x|z)] and the closed-form KL."""
    return ELBOTerms(recon=-likelihood.log_prob(decoder_output, x), kl=gaussian_kl(mu, logvar))
