"""A prior over the VQ-VAE's code maps: the gated PixelCNN (van den Oord et al. 2016, "Conditional
Image Generation with PixelCNN Decoders"), p(codes) = prod over positions in raster order of
p(code_ij | the codes before it).

Causality comes from padding, not from masked weights: a vertical stack sees only the rows above
a position, a horizontal stack only the positions to its left in its row plus the vertical
stack, which together cover everything before it with no blind spot. The first layer shifts
both stacks by one so that no position sees its own code; later layers may include the current
row (vertical) or position (horizontal) of features that already exclude it.
"""

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vae_lightning.errors import ConfigError
from vae_lightning.priors import Prior


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"model.prior.{key}", value, allowed)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def gate(x: torch.Tensor) -> torch.Tensor:
    """tanh(a) * sigmoid(b) of the two halves of the channels: the gated activation unit."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One gated layer of both stacks. `first`: the layer that reads the codes themselves, shifted
    by one row (vertical) and one column (horizontal), and without the horizontal residual, which
    would hand each position its own code."""

    def __init__(self, channels: int, kernel_size: int, first: bool):
        super().__init__()
        self.half = kernel_size // 2
        self.shift = 1 if first else 0
        self.vertical = nn.Conv2d(channels, 2 * channels, (self.half + 1, kernel_size))
        self.horizontal = nn.Conv2d(channels, 2 * channels, (1, self.half + 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.horizontal_out = nn.Conv2d(channels, channels, 1)

    def forward(self, v: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = v.shape[-2:]
        # Row i reads rows i - half - shift .. i - shift, column j columns j - half - shift .. j -
        # shift: the kernels' last row and column sit on the position, or before it when shifted.
        above = F.pad(v, (self.half, self.half, self.half + self.shift, 0))
        v_pre = self.vertical(above)[..., :height, :]
        left = F.pad(h, (self.half + self.shift, 0, 0, 0))
        h_pre = self.horizontal(left)[..., :width] + self.vertical_to_horizontal(v_pre)
        h_out = self.horizontal_out(gate(h_pre))
        return gate(v_pre), h_out if self.shift else h_out + h


class GatedPixelCNN(Prior):
    """p(codes) over (B, h, w) maps of `n_codes` codes (the posterior's codebook size), the
    VQ-VAE's learned prior (model=vqvae_prior): an embedding of each code (`channels`
    wide), `n_layers` gated layers of `kernel_size` (odd, at least 3, so the vertical stack
    widens as it deepens), and a 1x1 head giving the logits of every position's code."""

    analytic_kl = False

    def __init__(self, n_codes: int, channels: int = 64, n_layers: int = 8, kernel_size: int = 3):
        super().__init__()
        _require(
            _is_int(n_codes) and n_codes >= 2,
            "n_codes",
            n_codes,
            "an integer of at least 2: the first stage's codebook size",
        )
        _require(
            _is_int(channels) and channels > 0, "channels", channels, "a positive integer, e.g. 64"
        )
        _require(
            _is_int(n_layers) and n_layers > 0, "n_layers", n_layers, "a positive integer, e.g. 8"
        )
        _require(
            _is_int(kernel_size) and kernel_size >= 3 and kernel_size % 2 == 1,
            "kernel_size",
            kernel_size,
            "an odd integer of at least 3, e.g. 3",
        )
        self.n_codes = n_codes
        self.embedding = nn.Embedding(n_codes, channels)
        self.layers = nn.ModuleList(
            GatedLayer(channels, kernel_size, first=index == 0) for index in range(n_layers)
        )
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, n_codes, 1)
        )

    def logits(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, n_codes, h, w): each position's logits of its code given the codes before it."""
        v = h = self.embedding(codes).movedim(-1, 1)
        for layer in self.layers:
            v, h = layer(v, h)
        return self.head(h)

    def log_prob_per_position(self, codes: torch.Tensor) -> torch.Tensor:
        """log p(code_ij | the codes before it) of each position (B, h, w), in nats."""
        return -F.cross_entropy(self.logits(codes), codes, reduction="none")

    def log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        """log p(codes) (B,) in nats, summed over positions."""
        return self.log_prob_per_position(codes).flatten(1).sum(1)

    @torch.no_grad()
    def sample_codes(
        self,
        n: int,
        shape: tuple[int, int],
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """n code maps (n, *shape) drawn position by position in raster order, on the prior's
        device, from the logits divided by `temperature` (below 1: fewer, likelier codes);
        `generator` (on that device) makes the draws repeatable."""
        device = self.embedding.weight.device
        codes = torch.zeros(n, *shape, dtype=torch.long, device=device)
        for i in range(shape[0]):
            for j in range(shape[1]):
                probs = (self.logits(codes)[:, :, i, j] / temperature).softmax(dim=1)
                codes[:, i, j] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return codes
