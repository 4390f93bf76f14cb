"""p(codes) uniform over the K codes at every position of a code map: the VQ-VAE's prior while its
first stage trains (van den Oord et al. 2017). With the one-hot q(z|x), KL(q || p) is the constant
h*w*log K, so the ELBO stays a bound on log p(x) with the reconstruction as its only variable term.
"""

import math

import torch

from vae_lightning.priors import Prior


class UniformCodes(Prior):
    """Each position's code uniform and independent; `n_codes` is the posterior's codebook size."""

    analytic_kl = False

    def __init__(self, n_codes: int):
        super().__init__()
        self.n_codes = n_codes
        # Holds no data: it follows .to(), so draws land on the model's device.
        self.register_buffer("anchor", torch.zeros(0), persistent=False)

    def log_prob_per_position(self, codes: torch.Tensor) -> torch.Tensor:
        """log p of each position's code (B, h, w): -log K everywhere."""
        return torch.full(codes.shape, -math.log(self.n_codes), device=codes.device)

    def sample_codes(
        self,
        n: int,
        shape: tuple[int, int],
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """n code maps (n, *shape) of independent uniform codes; a temperature changes nothing
        in a uniform distribution."""
        device = generator.device if generator is not None else self.anchor.device
        return torch.randint(self.n_codes, (n, *shape), generator=generator, device=device)
