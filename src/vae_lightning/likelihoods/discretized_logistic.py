"""The discretised logistic mixture of PixelCNN++ (Salimans et al. 2017), the likelihood NVAE and
VDVAE use for 8-bit images."""

import torch
import torch.nn.functional as F

from vae_lightning.checks import positive_int, require
from vae_lightning.likelihoods import Likelihood

N_VALUES = 256
HALF_BIN = 1 / (N_VALUES - 1)  # on the [-1, 1] grid the 256 values are 2 / 255 apart
# PixelCNN++'s floor: a logistic far narrower than a bin puts all its mass in one bin already,
# and a smaller scale would only let the gradients of a confident wrong mean explode.
LOG_SCALE_MIN = -7.0


class DiscretizedLogisticMixture(Likelihood):
    """p(x|z) over 8-bit values: each pixel a mixture of n_mixtures discretised logistics, the
    channels of a pixel coupled autoregressively within each component, as PixelCNN++.

    A value k = round(255 x) is read on the grid y = 2k/255 - 1 in [-1, 1]; its bin is
    [y - 1/255, y + 1/255], except that the first bin reaches down to -inf and the last up to
    +inf, so the tails of the logistic fall on 0 and 255. For a pixel with channels k_1..k_C,

        p(k) = sum_m pi_m prod_c [sigmoid((y_c + 1/255 - mu_cm) / s_cm)
                                  - sigmoid((y_c - 1/255 - mu_cm) / s_cm)],
        mu_cm = mean_cm + sum_{j<c} tanh(alpha_cjm) y_j,

    with pi = softmax(logits) and log s_cm = max(log_scale_cm, -7); the coupling makes channel c
    depend on the channels before it (RGB: G on R, B on R and G). log_prob sums log p(k) over the
    pixels, in nats; a negative ELBO in bits/dim, -elbo / (C H W ln 2), compares with the
    literature's numbers for 8-bit images (a uniform model scores 8).

    The decoder's channels are read as [logits (n) | means (C, n) | log-scales (C, n) |
    alpha (C(C-1)/2, n)], the alphas in the order (1, 0), (2, 0), (2, 1): G|R, B|R, B|G; that is
    PixelCNN++'s 10 n channels for RGB and 3 n for grey.
    """

    def __init__(self, image_shape: tuple[int, int, int], n_mixtures: int = 10):
        super().__init__(image_shape)
        allowed = "a positive integer, e.g. 10"
        require(positive_int(n_mixtures), "model.likelihood.n_mixtures", n_mixtures, allowed)
        self.n_mixtures = n_mixtures
        self.n_channels = image_shape[0]
        # (channel, earlier channel) for each coupling coefficient, row by row.
        coupled, coupled_to = torch.tril_indices(self.n_channels, self.n_channels, -1)
        self.register_buffer("coupled", coupled, persistent=False)
        self.register_buffer("coupled_to", coupled_to, persistent=False)
        per_mixture = 1 + 2 * self.n_channels + len(coupled)
        self.out_channels = n_mixtures * per_mixture

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        log_weights, means, log_scales, alphas = self._split(params)
        k = (x * (N_VALUES - 1)).round().clamp(0, N_VALUES - 1).unsqueeze(-3)  # (B, C, 1, H, W)
        y = 2 * k / (N_VALUES - 1) - 1
        centred = y - means - self._coupling(alphas, y)
        inv_scale = (-log_scales).exp()
        log_cdf_upper = F.logsigmoid(inv_scale * (centred + HALF_BIN))
        log_survival_lower = F.logsigmoid(-inv_scale * (centred - HALF_BIN))
        # log(sigmoid(a) - sigmoid(b)) = log sigmoid(a) + log sigmoid(-b) + log(1 - e^(b - a)):
        # exact without the difference of two CDFs near 1, so no cut-off or density fallback as
        # in the reference; every branch stays finite, so torch.where passes clean gradients.
        log_in_bin = torch.where(
            k == 0,
            log_cdf_upper,
            torch.where(
                k == N_VALUES - 1,
                log_survival_lower,
                log_cdf_upper
                + log_survival_lower
                + torch.log(-torch.expm1(-2 * HALF_BIN * inv_scale)),
            ),
        )
        log_pixel = torch.logsumexp(log_weights + log_in_bin.sum(dim=-4), dim=-3)
        return log_pixel.sum(dim=(-2, -1))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The expected value of the mixture before discretisation, clipped to [-1, 1], mapped to
        [0, 1]: within a component E[y_c] = mean_c + sum_{j<c} tanh(alpha_cj) E[y_j]."""
        log_weights, means, _, alphas = self._split(params)
        expected = means
        # The coupling is strictly lower triangular: C - 1 substitutions reach every channel.
        for _ in range(self.n_channels - 1):
            expected = means + self._coupling(alphas, expected)
        mixed = (log_weights.exp().unsqueeze(-4) * expected).sum(dim=-3)
        return (mixed.clamp(-1, 1) + 1) / 2

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Log mixture weights (..., n, H, W), means and log-scales (..., C, n, H, W), the
        coupling coefficients tanh(alpha) (..., C(C-1)/2, n, H, W)."""
        n, c = self.n_mixtures, self.n_channels
        logits, means, log_scales, alphas = params.split(
            [n, c * n, c * n, len(self.coupled) * n], dim=-3
        )
        return (
            F.log_softmax(logits, dim=-3),
            means.unflatten(-3, (c, n)),
            log_scales.unflatten(-3, (c, n)).clamp(min=LOG_SCALE_MIN),
            torch.tanh(alphas.unflatten(-3, (len(self.coupled), n))),
        )

    def _coupling(self, coefficients: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """sum_{j<c} coefficient_cj y_j for each channel c (0 for the first): (..., C, n, H, W)."""
        terms = coefficients * y.index_select(-4, self.coupled_to)
        shape = (*terms.shape[:-4], self.n_channels, *terms.shape[-3:])
        return terms.new_zeros(shape).index_add(-4, self.coupled, terms)
