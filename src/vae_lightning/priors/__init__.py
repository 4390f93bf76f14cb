"""The prior p(z) of the VAE: `model.prior` picks one (conf/model/prior/, one file here each).

Every prior has the same interface, which is all the model and the objectives use:

- `log_prob(z)`: log p(z) summed over the last (latent) dim, any leading dims;
- `sample(n, generator=None)`: n draws (n, latent_dim) on the prior's device, in its dtype;
- `kl(mu, logvar, z)`: KL(q(z|x) || p(z)) per sample, in closed form when `analytic_kl`, else
  the Monte Carlo estimate log q(z|x) - log p(z) at the posterior sample(s) z;
- `kl_per_dim(mu, logvar, z)`: each latent dimension's KL to the prior's marginal in it, for
  free bits, the KL-per-dimension chart and active units.
"""

import torch
from torch import nn


class Prior(nn.Module):
    """p(z) over latent_dim dimensions (see the package docstring)."""

    analytic_kl: bool

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def kl_per_dim(self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reported_kl_per_dim(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """`kl_per_dim` for pictures and metrics: a prior without a closed-form KL is estimated
        at draws of a generator of its own, so drawing them does not move the random stream
        that training uses."""
        z = None
        if not self.analytic_kl:
            generator = torch.Generator(mu.device).manual_seed(0)
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            z = mu + eps * (0.5 * logvar).exp()
        return self.kl_per_dim(mu, logvar, z)
