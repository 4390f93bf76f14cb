"""The networks between images and latents: `model.network` picks one (conf/model/network/, one
file here each). A network runs every pass the VAE makes, given the model's other parts, so the
VAE never asks which network it holds:

- `encode(x)`: the posterior's parameters h for the images x (the top layer's, in a hierarchy);
- `decode(z)`: the likelihood's parameters for latents z;
- `reconstruct(x, parts)`, `sample(n, parts, ...)`: the likelihood's parameters at the
  posterior's mean, or at draws from the prior;
- `elbo_terms(x, parts)`, `log_importance_weights(x, k, parts, ...)`: the bounds' terms;
- `posterior_by_layer(x, parts)`: each stochastic layer's posterior mean and KL per dimension.

`EncoderDecoder` implements them once for one stochastic layer (mlp.py, conv.py build only its
encoder and decoder); the hierarchy (hierarchical.py) implements them for its stack of layers.

A network built with `n_classes` (the VAE's, with model.condition=label) is conditional: each
pass also takes `y`, the class index of each image (batch,), as Sohn et al.'s CVAE (2015) does:
`EncoderDecoder` gives its encoder the one-hot y as extra constant image channels, q(z|x,y), and
its decoder z and the one-hot y side by side, p(x|z,y); mlp.py and conv.py only widen their
first layers by `n_classes`. The hierarchy takes no condition (config.py refuses the two).
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vae_lightning.elbo import ELBOTerms
from vae_lightning.likelihoods import Likelihood
from vae_lightning.posteriors import Posterior
from vae_lightning.priors import Prior


class Parts(NamedTuple):
    """The parts a network's passes combine with its own: q(z|x), p(z) and p(x|z)."""

    posterior: Posterior
    prior: Prior
    likelihood: Likelihood


class LayerPosterior(NamedTuple):
    """One stochastic layer's posterior, per image, for pictures and metrics."""

    mean: torch.Tensor  # E_q[z_l], flattened (batch, units of the layer): what active units count
    kl_per_dim: torch.Tensor  # KL(q || p) of each latent dimension (batch, dims of the layer)


class Network(nn.Module):
    """The interface of the package docstring."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reconstruct(self, x: torch.Tensor, parts: Parts) -> torch.Tensor:
        raise NotImplementedError

    def sample(
        self, n: int, parts: Parts, generator: torch.Generator | None, temperature: float
    ) -> torch.Tensor:
        raise NotImplementedError

    def elbo_terms(self, x: torch.Tensor, parts: Parts) -> ELBOTerms:
        raise NotImplementedError

    def log_importance_weights(
        self, x: torch.Tensor, k: int, parts: Parts, stop_posterior_grad: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def posterior_by_layer(self, x: torch.Tensor, parts: Parts) -> list[LayerPosterior]:
        raise NotImplementedError

    def compile_networks(self) -> None:
        """torch.compile, in place, the networks the passes call: the state_dict keys stay."""
        raise NotImplementedError


class EncoderDecoder(Network):
    """One stochastic layer: `self.encoder` maps images to the posterior's parameters h,
    `self.decoder` latents to the likelihood's parameters; a subclass builds the two, for inputs
    of `n_classes` more channels (encoder) and features (decoder) when it is conditional. Every
    pass takes `y` then, and no pass without it."""

    encoder: nn.Module
    decoder: nn.Module
    n_classes: int = 0  # 0: unconditional

    def with_class(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The encoder's input: images (B, C, H, W) and, when conditional, their one-hot
        classes as n_classes constant channels more."""
        if not self.n_classes:
            return x
        one_hot = F.one_hot(y, self.n_classes).to(x.dtype)
        return torch.cat([x, one_hot[:, :, None, None].expand(-1, -1, *x.shape[2:])], dim=1)

    def latent_with_class(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The decoder's input: latents (..., B, D) and, when conditional, the one-hot classes
        of the B images beside them (the same for every leading draw)."""
        if not self.n_classes:
            return z
        one_hot = F.one_hot(y, self.n_classes).to(z.dtype).expand(*z.shape[:-1], -1)
        return torch.cat([z, one_hot], dim=-1)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder(self.with_class(x, y))

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(self.latent_with_class(z, y))

    def reconstruct(
        self, x: torch.Tensor, parts: Parts, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.decode(parts.posterior.mean(self.encode(x, y)), y)

    def sample(
        self,
        n: int,
        parts: Parts,
        generator: torch.Generator | None,
        temperature: float,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        z = parts.prior.sample(n, generator)
        return self.decode(z if temperature == 1 else temperature * z, y)

    def elbo_terms(self, x: torch.Tensor, parts: Parts, y: torch.Tensor | None = None) -> ELBOTerms:
        """recon = -log p(x|z) at one z ~ q(z|x), and KL(q(z|x) || p(z)), per image."""
        h = self.encode(x, y)
        z, log_q = parts.posterior.rsample(h)
        kl, kl_per_dim = parts.posterior.kl(h, z, log_q, parts.prior)
        recon = -parts.likelihood.log_prob(self.decode(z, y), x)
        return ELBOTerms(recon, kl, kl_per_dim, *parts.posterior.gaussian(h), z)

    def log_importance_weights(
        self,
        x: torch.Tensor,
        k: int,
        parts: Parts,
        stop_posterior_grad: bool = False,
        y: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x) for k draws z_i ~ q(z|x) per
        image (k, batch), and the draws (k, batch, latent_dim); the k decodings go through the
        decoder in one call."""
        z, log_q = parts.posterior.rsample(self.encode(x, y), k, stop_posterior_grad)
        params = self.decoder(self.latent_with_class(z, y).flatten(0, 1))
        log_lik = parts.likelihood.log_prob(params.view(k, len(x), *params.shape[1:]), x)
        return log_lik + parts.prior.log_prob(z) - log_q, z

    def posterior_by_layer(
        self, x: torch.Tensor, parts: Parts, y: torch.Tensor | None = None
    ) -> list[LayerPosterior]:
        mu, logvar = parts.posterior.gaussian(self.encode(x, y))
        return [LayerPosterior(mu, parts.prior.reported_kl_per_dim(mu, logvar))]

    def compile_networks(self) -> None:
        self.encoder.compile()
        self.decoder.compile()
