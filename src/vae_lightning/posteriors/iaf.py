"""q(z|x) as an inverse autoregressive flow (Kingma et al. 2016, "Improved Variational Inference
with Inverse Autoregressive Flow"): a diagonal Gaussian draw z0 pushed through autoregressive
affine steps, each a MADE network over z that also reads a context vector from the encoder.

Each step is z <- m(z) + exp(s(z)) * z, where output i of (m, s) depends only on the coordinates
before i in the step's order, so the Jacobian is triangular with diagonal exp(s) and
log |det| = sum(s): log q(z|x) = log N(z0; mu, sigma^2) - sum over steps of sum(s), exact at the
price of one network pass per step. Steps alternate the order of the coordinates, so that every
coordinate comes to depend on every other.

The paper's numerically stable form, z <- sigma * z + (1 - sigma) * m with sigma = sigmoid(s),
cannot be the identity (sigma = 1 needs s = infinity). Here the steps' output layers start at
zero, so m = 0, s = 0 and every step is exactly the identity: a new IAF is exactly the diagonal
Gaussian posterior, and training starts from there. The stability the sigmoid gave comes from
bounding s softly instead (LOG_SCALE_BOUND).
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from vae_lightning.checks import positive_int, require
from vae_lightning.elbo import diagonal_gaussian_log_prob, reparameterize
from vae_lightning.posteriors import Posterior
from vae_lightning.posteriors.gaussian import LOGVAR_RANGE

# One step scales a coordinate by at most e^5 (about 150) either way, so a step whose network
# output runs away during training cannot overflow exp(s) or send log q to infinity, which the
# paper's sigmoid gate also prevents. s = B tanh(s_raw / B) keeps s = 0 at s_raw = 0 (the
# identity step) with slope 1 there.
LOG_SCALE_BOUND = 5.0


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out_features, in_features)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__(mask.shape[1], mask.shape[0])
        # Derived from the config alone, so rebuilt at every start rather than saved.
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class AutoregressiveStep(nn.Module):
    """MADE (Germain et al. 2015) with the context: (m, s) from z (..., D) and a context (..., C).

    `order` gives each coordinate of z its place 1..D. A hidden unit has a degree d in 0..D-1 and
    sees the coordinates with place <= d (degree 0: the context only); output i sees the hidden
    units with degree < place(i), so m_i and s_i depend on the coordinates before i alone, and
    every output, the first included, can read the context.
    """

    def __init__(self, order: torch.Tensor, hidden: int, context_dim: int):
        super().__init__()
        latent_dim = len(order)
        degrees = torch.arange(hidden) % latent_dim
        places = torch.cat([order, order])
        self.input_layer = MaskedLinear(degrees[:, None] >= order[None, :])
        self.context_layer = nn.Linear(context_dim, hidden)
        self.hidden_layer = MaskedLinear(degrees[:, None] >= degrees[None, :])
        self.output_layer = MaskedLinear(places[:, None] > degrees[None, :])
        nn.init.zeros_(self.output_layer.weight)
        nn.init.zeros_(self.output_layer.bias)

    def forward(self, z: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = F.elu(self.input_layer(z) + self.context_layer(context))
        a = F.elu(self.hidden_layer(a))
        shift, log_scale = self.output_layer(a).chunk(2, dim=-1)
        return shift, LOG_SCALE_BOUND * torch.tanh(log_scale / LOG_SCALE_BOUND)

    def transform(
        self, z: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The step z -> m + exp(s) * z and its log |det|, sum(s) (z's shape less its last dim)."""
        shift, log_scale = self(z, context)
        return shift + log_scale.exp() * z, log_scale.sum(dim=-1)


class IAF(Posterior):
    """The encoder gives mu and log sigma^2 of the base Gaussian (latent_dim each, log sigma^2
    clamped to LOGVAR_RANGE) and a context h (context_dim) that every step reads; n_steps MADE
    steps of `hidden` units in each of their two hidden layers transform the draw."""

    def __init__(self, latent_dim: int, n_steps: int = 2, hidden: int = 64, context_dim: int = 16):
        super().__init__()
        sizes = {"n_steps": (n_steps, 2), "hidden": (hidden, 64), "context_dim": (context_dim, 16)}
        for key, (value, example) in sizes.items():
            allowed = f"a positive integer, e.g. {example}"
            require(positive_int(value), f"model.posterior.{key}", value, allowed)
        self.latent_dim = latent_dim
        self.context_dim = context_dim
        self.encoder_outputs = 2 * latent_dim + context_dim
        order = torch.arange(1, latent_dim + 1)
        orders = (order, order.flip(0))
        self.steps = nn.ModuleList(
            AutoregressiveStep(orders[i % 2], hidden, context_dim) for i in range(n_steps)
        )

    def split(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """mu, log sigma^2 (clamped) of the base Gaussian and the context, from the encoder's h."""
        mu, logvar, context = h.split([self.latent_dim, self.latent_dim, self.context_dim], dim=-1)
        return mu, logvar.clamp(*LOGVAR_RANGE), context

    def gaussian(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(h)[:2]

    def flow(self, z0: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z after every step, and the sum of the steps' log |det| (z0's shape less its last dim);
        z0 may have leading sample dims that the context broadcasts over."""
        z, log_det = z0, z0.new_zeros(z0.shape[:-1])
        for step in self.steps:
            z, step_log_det = step.transform(z, context)
            log_det = log_det + step_log_det
        return z, log_det

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        """The flow's image of mu (eps = 0), a deterministic z at the centre of q as mu is for
        the diagonal posterior; q's own mean has no closed form."""
        mu, _, context = self.split(h)
        return self.flow(mu, context)[0]

    def rsample(
        self, h: torch.Tensor, k: int | None = None, stop_posterior_grad: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar, context = self.split(h)
        z0 = reparameterize(mu, logvar, k)
        z, log_det = self.flow(z0, context)
        if stop_posterior_grad:
            return z, self.frozen_log_prob(z, h)
        return z, diagonal_gaussian_log_prob(z0, mu, logvar) - log_det

    def frozen_log_prob(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """log q(z|x) of any z, with gradients to z alone (q's parameters and h detached): what
        the doubly-reparameterised gradient needs, since z = f(eps) and the density at z must
        see z move but not the flow that made it. The flow is inverted step by step, last first.

        A step's inverse x = (z - m(x)) exp(-s(x)) is found by iterating that equation from 0:
        as m_i and s_i read only the coordinates before i, after n passes the first n coordinates
        in the step's order are the exact inverse as functions of z, so after D passes x, the
        last pass's s and their gradients to z are exact. That costs D network passes per step,
        where drawing costs one.
        """
        mu, logvar, context = self.split(h.detach())
        log_det = z.new_zeros(z.shape[:-1])
        for step in reversed(self.steps):
            frozen = {name: p.detach() for name, p in step.named_parameters()}
            x = torch.zeros_like(z)
            for _ in range(self.latent_dim):
                shift, log_scale = functional_call(step, frozen, (x, context))
                x = (z - shift) * (-log_scale).exp()
            log_det = log_det + log_scale.sum(dim=-1)
            z = x
        return diagonal_gaussian_log_prob(z, mu, logvar) - log_det

    def kl(
        self, h: torch.Tensor, z: torch.Tensor, log_q: torch.Tensor, prior: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The Monte Carlo estimate log q(z|x) - log p(z) at z: the flow has no closed form, and
        its KL does not split into dimensions."""
        return log_q - prior.log_prob(z), None
