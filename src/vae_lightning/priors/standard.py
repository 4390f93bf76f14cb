"""p(z) = N(0, I), the VAE's standard prior."""

import torch

from vae_lightning.elbo import diagonal_gaussian_log_prob, gaussian_kl, gaussian_kl_per_dim
from vae_lightning.priors import Prior


class StandardPrior(Prior):
    """p(z) = N(0, I): the KL to a diagonal Gaussian posterior is in closed form."""

    analytic_kl = True

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        # Holds no data: it follows .to() and .double(), so samples land on the right device and
        # dtype; not persistent, so the state_dict stays empty.
        self.register_buffer("anchor", torch.zeros(0), persistent=False)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I) summed over the last dim: (..., D) -> (...)."""
        return diagonal_gaussian_log_prob(z)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws (n, latent_dim); the same generator state gives the same draws."""
        return torch.randn(
            n,
            self.latent_dim,
            generator=generator,
            dtype=self.anchor.dtype,
            device=self.anchor.device,
        )

    def kl(
        self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor | None = None
    ) -> torch.Tensor:
        """KL(N(mu, sigma^2) || N(0, I)) in closed form, (batch,); z is not needed."""
        return gaussian_kl(mu, logvar)

    def kl_per_dim(
        self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Each dimension's closed-form KL, (batch, latent_dim); they sum to `kl`."""
        return gaussian_kl_per_dim(mu, logvar)
