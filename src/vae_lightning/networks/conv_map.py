"""The VQ-VAE's network (van den Oord et al. 2017): stride-2 4x4 convolutions from the image to a
map of D-vectors, one per position, which the posterior quantises to a code map; the decoder
mirrors them back from the quantised map. The prior is over code maps (priors/uniform_codes.py
while the first stage trains, priors/pixelcnn.py as the second stage).

With a one-hot q(z|x), KL(q || p) = -log p(codes), so the ELBO is -(recon - log p(codes)): a
bound on log p(x) that eval.py reports as its NLL (every importance weight is the same, so the
IWAE bound equals it for any k) and in bits/dim.
"""

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from vae_lightning.elbo import ELBOTerms
from vae_lightning.networks import LayerPosterior, Network, Parts
from vae_lightning.networks.conv import check_conv_layers
from vae_lightning.options import conv_downsampling


class ConvMapNetwork(Network):
    """Encoder: `hidden_dims` stride-2 convolutions, then a 1x1 convolution to the posterior's
    `encoder_outputs` channels (the code vectors' size D) at each of the (h, w) positions;
    decoder: a 3x3 convolution from D, then the transposed convolutions back to the likelihood's
    `out_channels`. Image sides must be divisible by 2 ** len(hidden_dims)."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        encoder_outputs: int,
        out_channels: int,
        hidden_dims: Sequence[int] = (32, 64),
    ):
        super().__init__()
        check_conv_layers(image_shape, hidden_dims)
        self.code_shape = conv_downsampling(image_shape, len(hidden_dims))
        layers: list[nn.Module] = []
        for c_in, c_out in pairwise([image_shape[0], *hidden_dims]):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        self.encoder = nn.Sequential(*layers, nn.Conv2d(hidden_dims[-1], encoder_outputs, 1))
        layers = [nn.Conv2d(encoder_outputs, hidden_dims[-1], 3, padding=1)]
        for c_in, c_out in pairwise([*reversed(hidden_dims), out_channels]):
            layers += [nn.ReLU(), nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)]
        self.decoder = nn.Sequential(*layers)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: quantised maps, or flattened as VAE.encode gives them (B, D*h*w)."""
        return self.decoder(z.view(len(z), -1, *self.code_shape))

    def reconstruct(self, x: torch.Tensor, parts: Parts) -> torch.Tensor:
        return self.decoder(parts.posterior.mean(self.encoder(x)))

    def sample(
        self, n: int, parts: Parts, generator: torch.Generator | None, temperature: float
    ) -> torch.Tensor:
        codes = parts.prior.sample_codes(n, self.code_shape, generator, temperature)
        return self.decoder(parts.posterior.lookup(codes.to(parts.posterior.codebook.device)))

    def elbo_terms(self, x: torch.Tensor, parts: Parts) -> ELBOTerms:
        """recon = -log p(x|z_q), kl = -log p(codes) (its value per position in kl_per_dim), the
        commitment loss as the penalty. The codebook follows the encoder only while the encoder
        learns: not in a second stage, whose first is frozen."""
        z_e = self.encoder(x)
        quantized = parts.posterior(z_e, update=z_e.requires_grad)
        recon = -parts.likelihood.log_prob(self.decoder(quantized.z_q), x)
        kl_per_position = -parts.prior.log_prob_per_position(quantized.codes).flatten(1)
        return ELBOTerms(
            recon,
            kl_per_position.sum(1),
            kl_per_position,
            z=quantized.z_q.flatten(1),
            penalty=quantized.commitment_loss,
        )

    def log_importance_weights(
        self, x: torch.Tensor, k: int, parts: Parts, stop_posterior_grad: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) is a point mass: each of the k weights is the ELBO, decoded once."""
        terms = self.elbo_terms(x, parts)
        return terms.elbo.expand(k, -1), terms.z.expand(k, *terms.z.shape)

    def posterior_by_layer(self, x: torch.Tensor, parts: Parts) -> list[LayerPosterior]:
        """The quantised map (flattened) as the mean, and a position's -log p(code) as its KL."""
        codes = parts.posterior.codes(self.encoder(x))
        kl_per_position = -parts.prior.log_prob_per_position(codes).flatten(1)
        return [LayerPosterior(parts.posterior.lookup(codes).flatten(1), kl_per_position)]

    def compile_networks(self) -> None:
        self.encoder.compile()
        self.decoder.compile()
