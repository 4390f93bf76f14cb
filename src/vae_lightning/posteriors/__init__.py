"""The posterior q(z|x): the distribution of the latents given what the encoder computed from an
image. `model.posterior` picks one (conf/model/posterior/, one file here each)."""

import torch
from torch import nn


class Posterior(nn.Module):
    """q(z|x) from the encoder's output h (batch, encoder_outputs).

    `gaussian(h)`: the diagonal Gaussian (mu, log sigma^2) it is based on, what `VAE.encode` gives
    (traversals, disentanglement metrics and the VampPrior read it); `mean(h)`: a deterministic z,
    for reconstructions; `rsample(h, k)`: reparameterised draws and their log q(z|x);
    `kl(h, z, log_q, prior)`: KL(q(z|x) || p(z)) per image, and per latent dimension where it
    splits so (free bits, the KL chart).
    """

    encoder_outputs: int
    # Whether z has continuous dimensions that latent traversals can sweep.
    traversable: bool = True

    def gaussian(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def rsample(
        self, h: torch.Tensor, k: int | None = None, stop_posterior_grad: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """z (batch, D) and log q(z|x) (batch,); with k, k draws per image: (k, batch, D) and
        (k, batch). stop_posterior_grad detaches q's parameters inside log q, not in z: the
        doubly-reparameterised gradient (objectives.iwae) needs only the path through z."""
        raise NotImplementedError

    def logged(self) -> dict[str, torch.Tensor]:
        """Values of its own to log, named without a stage (the VQ's codebook perplexity)."""
        return {}

    def kl(
        self, h: torch.Tensor, z: torch.Tensor, log_q: torch.Tensor, prior: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError
