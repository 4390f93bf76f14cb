"""The VQ-VAE's posterior (van den Oord et al. 2017): each position of the encoder's map is
replaced by its nearest vector in a codebook of K codes, a deterministic one-hot q(z|x).

The codebook learns by exponential moving averages (the paper's appendix, as Sonnet's
VectorQuantizerEMA) rather than by gradient, so it is a set of buffers that the optimiser never
sees and that checkpoints hold. Codes that stop being chosen are restarted at encoder outputs
of the batch (as vector-quantize-pytorch's dead-code expiry), from torch's global generator,
which Lightning seeds and checkpoints, so a resumed run draws the same restarts.
"""

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from vae_lightning.errors import ConfigError
from vae_lightning.posteriors import Posterior
from vae_lightning.posteriors.gaussian import LOGVAR_RANGE


class Quantized(NamedTuple):
    """What the quantiser gives for a batch of encoder maps (B, D, h, w).

    z_q: the quantised map (B, D, h, w), equal to the chosen codes in value; its gradient goes
    straight through to the encoder's map. codes: the chosen code at each position (B, h, w).
    commitment_loss: beta * ||z_e - sg(e)||^2 per image (B,), summed over positions and
    channels as the reconstruction term is summed over pixels. perplexity: exp of the entropy
    of the batch's code histogram (1 to K); usage: the fraction of the K codes the batch chose.
    """

    z_q: torch.Tensor
    codes: torch.Tensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor
    usage: torch.Tensor


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"model.posterior.{key}", value, allowed)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class VectorQuantizer(Posterior):
    """A codebook of `n_codes` vectors of size `latent_dim` over encoder maps (B, latent_dim,
    h, w): `model.posterior=vq`, with the code-map network and a prior over codes (model=vqvae).

    In training mode each call (with `update`) also moves the codebook (decay: the EMA's weight
    on its past; epsilon: the Laplace smoothing of the cluster sizes, which keeps an unused
    code's division finite) and restarts every code whose EMA cluster size, its average count of
    assigned vectors per batch, is below `dead_code_threshold` (0: never restart).
    """

    def __init__(
        self,
        latent_dim: int,
        n_codes: int = 512,
        commitment: float = 0.25,
        decay: float = 0.99,
        dead_code_threshold: float = 1.0,
        epsilon: float = 1e-5,
    ):
        super().__init__()
        _require(
            isinstance(n_codes, int) and not isinstance(n_codes, bool) and n_codes >= 2,
            "n_codes",
            n_codes,
            "an integer of at least 2, e.g. 512",
        )
        _require(
            _is_number(commitment) and commitment >= 0,
            "commitment",
            commitment,
            "a number >= 0, e.g. 0.25 as in the paper",
        )
        _require(
            _is_number(decay) and 0 <= decay < 1, "decay", decay, "a number in [0, 1), e.g. 0.99"
        )
        _require(
            _is_number(dead_code_threshold) and dead_code_threshold >= 0,
            "dead_code_threshold",
            dead_code_threshold,
            "a number >= 0 (assigned vectors per batch; 0 turns restarts off), e.g. 1",
        )
        _require(
            _is_number(epsilon) and epsilon > 0,
            "epsilon",
            epsilon,
            "a small positive number, e.g. 1e-5",
        )
        self.n_codes = n_codes
        self.commitment = commitment
        self.decay = decay
        self.dead_code_threshold = dead_code_threshold
        self.epsilon = epsilon
        # The encoder's map has one code's worth of channels at each position.
        self.encoder_outputs = latent_dim
        self.register_buffer("codebook", torch.randn(n_codes, latent_dim))
        # Sizes start at zero: after the first training step most codes are below the threshold,
        # so the codebook starts at encoder outputs rather than at its random draw.
        self.register_buffer("cluster_size", torch.zeros(n_codes))
        self.register_buffer("code_sum", torch.zeros(n_codes, latent_dim))
        self.last_statistics: dict[str, torch.Tensor] = {}

    # A code map has no continuous dimension to sweep: no latent traversals.
    traversable = False

    def forward(self, z_e: torch.Tensor, update: bool = True) -> Quantized:
        """The quantised map; in training mode with `update` (False: the encoder is frozen, as
        in the second stage) the codebook moves too. Its perplexity and usage are then what
        `logged()` gives."""
        # In the codebook's precision even under mixed precision: bfloat16 distances pick wrong
        # codes and bfloat16 sums of many vectors lose their low digits.
        with torch.autocast(z_e.device.type, enabled=False):
            quantized = self.quantize(z_e.to(self.codebook.dtype), update)
        self.last_statistics = {"perplexity": quantized.perplexity, "usage": quantized.usage}
        return quantized

    def logged(self) -> dict[str, torch.Tensor]:
        return self.last_statistics

    def codes(self, z_e: torch.Tensor) -> torch.Tensor:
        """The nearest code at each position of the maps (B, h, w), the codebook left alone."""
        with torch.autocast(z_e.device.type, enabled=False):
            flat = z_e.to(self.codebook.dtype).movedim(1, -1).reshape(-1, z_e.shape[1])
            return self.nearest_codes(flat).view(z_e.shape[0], *z_e.shape[2:])

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        """The quantised map, what the decoder reads."""
        return self.lookup(self.codes(h))

    def gaussian(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) is a point mass at the quantised map: it flattened (B, D*h*w) as mu, and log
        sigma^2 at the floor of the Gaussian posteriors' range."""
        mu = self.mean(h).flatten(1)
        return mu, torch.full_like(mu, LOGVAR_RANGE[0])

    def quantize(self, z_e: torch.Tensor, update: bool = True) -> Quantized:
        flat = z_e.detach().movedim(1, -1).reshape(-1, z_e.shape[1])
        codes = self.nearest_codes(flat)
        # Sums over one-hot rows by matmul rather than index_add_, whose atomic adds on a GPU land
        # in any order: a resumed run must repeat the codebook bit for bit.
        one_hot = F.one_hot(codes, self.n_codes).to(flat.dtype)
        counts = one_hot.sum(0)
        e = self.codebook[codes].view(*z_e.shape[:1], *z_e.shape[2:], -1).movedim(-1, 1)
        commitment_loss = self.commitment * (z_e - e).pow(2).flatten(1).sum(1)
        if self.training and update:
            self.update_codebook(flat, one_hot, counts)
        probs = counts / counts.sum()
        return Quantized(
            z_q=z_e + (e - z_e).detach(),
            codes=codes.view(z_e.shape[0], *z_e.shape[2:]),
            commitment_loss=commitment_loss,
            perplexity=torch.exp(-torch.special.xlogy(probs, probs).sum()),
            usage=(counts > 0).to(flat.dtype).mean(),
        )

    def nearest_codes(self, flat: torch.Tensor) -> torch.Tensor:
        """The index of the code nearest (Euclidean) to each row of flat (N, D); ties to the
        lowest index."""
        distances = (
            flat.pow(2).sum(1, keepdim=True)
            - 2 * flat @ self.codebook.T
            + self.codebook.pow(2).sum(1)
        )
        return distances.argmin(1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """The quantised map (B, D, h, w) of a code map (B, h, w): what the decoder reads, e.g.
        for codes drawn from the prior."""
        return self.codebook[codes].movedim(-1, 1)

    @torch.no_grad()
    def update_codebook(self, flat: torch.Tensor, one_hot: torch.Tensor, counts: torch.Tensor):
        """N_k <- decay N_k + (1 - decay) n_k and m_k <- decay m_k + (1 - decay) sum of the
        vectors assigned to k; then e_k = m_k / N~_k, with N~_k = (N_k + eps) / (n + K eps) n the
        Laplace-smoothed size (n = sum of N_k). Dead codes are then restarted."""
        sums = one_hot.T @ flat
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.code_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (n + self.n_codes * self.epsilon) * n
        self.codebook.copy_(self.code_sum / smoothed.unsqueeze(1))
        if self.dead_code_threshold > 0:
            self.restart_dead_codes(flat)

    def restart_dead_codes(self, flat: torch.Tensor):
        """Each code whose cluster size is below the threshold moves to an encoder output of the
        batch drawn uniformly, with the threshold as its size (and a sum to match), so it stays
        there only while it is chosen at least that often. A draw is made for every code on
        every step, on the CPU: no host sync to count the dead, and the same stream of draws
        whatever the device."""
        picks = flat[torch.randint(flat.shape[0], (self.n_codes,)).to(flat.device)]
        dead = (self.cluster_size < self.dead_code_threshold).unsqueeze(1)
        self.codebook.copy_(torch.where(dead, picks, self.codebook))
        self.code_sum.copy_(torch.where(dead, picks * self.dead_code_threshold, self.code_sum))
        self.cluster_size.masked_fill_(dead.squeeze(1), self.dead_code_threshold)
