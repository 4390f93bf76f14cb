"""The mathematics of the VAE as pure tensor functions: the Gaussian KL and log density, the
reparameterisation trick, the ELBO's terms and the importance-weighted bound (IWAE). The model's
parts (likelihoods/, posteriors/, priors/, networks/) are built on them.

Conventions used everywhere in this project: every quantity is per sample, summed over pixels and
latent dimensions; averaging over the batch happens only where a loss is formed.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

LOG_2PI = math.log(2 * math.pi)
# Likelihoods sum over an image's (C, H, W) and keep the leading dims: (batch,) or (samples, batch).
PIXEL_DIMS = (-3, -2, -1)


def gaussian_kl_per_dim(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    prior_mu: torch.Tensor | None = None,
    prior_logvar: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(N(mu_d, sigma_d^2) || N(0, 1)) = -1/2 (1 + log sigma_d^2 - sigma_d^2 - mu_d^2) each;
    with a prior N(m_d, s_d^2) given (the hierarchy's p(z_l | z_>l)), elementwise

        KL = 1/2 (log s_d^2 - log sigma_d^2 + (sigma_d^2 + (mu_d - m_d)^2) / s_d^2 - 1).
    """
    if prior_mu is None:
        return -0.5 * (1 + logvar - logvar.exp() - mu.pow(2))
    prior_precision = (-prior_logvar).exp()
    return 0.5 * (
        prior_logvar - logvar + (logvar.exp() + (mu - prior_mu).pow(2)) * prior_precision - 1
    )


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)), per sample: the per-dimension KLs summed."""
    return gaussian_kl_per_dim(mu, logvar).sum(dim=-1)


def diagonal_gaussian_log_prob(
    z: torch.Tensor, mu: torch.Tensor | float = 0.0, logvar: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dim; the defaults give the prior."""
    logvar = torch.as_tensor(logvar, dtype=z.dtype, device=z.device)
    return -0.5 * ((z - mu).pow(2) * (-logvar).exp() + logvar + LOG_2PI).sum(dim=-1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I), so gradients flow through mu and sigma; with k,
    k draws of each (k, *mu.shape)."""
    shape = mu.shape if k is None else (k, *mu.shape)
    eps = torch.randn(shape, dtype=mu.dtype, device=mu.device)
    return mu + eps * (0.5 * logvar).exp()


class ELBOTerms(NamedTuple):
    """Per-sample terms: recon = -log p(x|z) and kl = KL(q(z|x) || p(z)); elbo = -(recon + kl).

    kl_per_dim (batch, latent_dim), when given, sums to kl; free bits need it. mu and logvar
    (batch, latent_dim) are the posterior's and z (batch, latent_dim) the sample that recon was
    computed at, for objectives that regularise the posterior or its samples. A hierarchical
    model gives kl_per_layer (batch, layers) instead of mu, logvar and z; it sums to kl.
    penalty (batch,), when given, is a term of the training loss outside the ELBO (the VQ-VAE's
    commitment loss).
    """

    recon: torch.Tensor
    kl: torch.Tensor
    kl_per_dim: torch.Tensor | None = None
    mu: torch.Tensor | None = None
    logvar: torch.Tensor | None = None
    z: torch.Tensor | None = None
    kl_per_layer: torch.Tensor | None = None
    penalty: torch.Tensor | None = None

    @property
    def elbo(self) -> torch.Tensor:
        return -(self.recon + self.kl)

    def loss(self, beta: float = 1.0, free_bits: float = 0.0) -> torch.Tensor:
        """The training loss: the batch mean of recon + beta * KL (beta = 1 gives the -ELBO).

        With free_bits = lambda > 0 the KL term is sum_d max(lambda, mean over the batch of KL_d)
        (Kingma et al. 2016): a dimension that carries less than lambda nats is not pushed further
        towards the prior, which keeps it from collapsing. With kl_per_layer the floor is per
        layer, sum_l max(lambda, mean KL_l), as IAF's free bits per group of latents (ibid.).
        This changes the loss only, never the ELBO; so does the penalty, added as its batch mean.
        """
        if free_bits > 0:
            groups = self.kl_per_dim if self.kl_per_layer is None else self.kl_per_layer
            kl_term = groups.mean(dim=0).clamp(min=free_bits).sum()
        else:
            kl_term = self.kl.mean()
        loss = self.recon.mean() + beta * kl_term
        return loss if self.penalty is None else loss + self.penalty.mean()


def iwae_bound(
    log_weights: Callable[[int], torch.Tensor], k: int, batch_size: int, max_rows: int = 8192
) -> torch.Tensor:
    """The importance-weighted bound log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x), per image
    (Burda et al. 2016): a lower bound on log p(x) that rises towards it as k grows; k = 1 is the
    ELBO. `log_weights(n)` gives n log weights per image (n, batch_size); they are drawn in
    chunks of at most `max_rows` decoded images, so memory stays bounded for any k, and each
    chunk is reduced by log-sum-exp before the next one is drawn.
    """
    per_chunk = max(1, max_rows // batch_size)
    partial = [
        torch.logsumexp(log_weights(min(per_chunk, k - done)), dim=0)
        for done in range(0, k, per_chunk)
    ]
    return torch.logsumexp(torch.stack(partial), dim=0) - math.log(k)
