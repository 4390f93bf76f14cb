"""A hierarchical VAE with top-down inference (Ladder VAE, Sønderby et al. 2016; the residual
cells of NVAE, Vahdat & Kautz 2020, and VDVAE, Child 2021), as networks and the bounds on them.

L stochastic layers, numbered 1 (next to the image) to L (the top). A deterministic bottom-up
pass over the image gives one feature a_l per layer. The top-down pass then starts from a learned
state h and, at each layer from the top down, forms the prior p(z_l | z_>l) from h alone and the
posterior q(z_l | x, z_>l) from h and a_l; one z_l is drawn and merged into h, which carries
z_>=l on to the layer below. The output head turns the final state into the likelihood's
parameters. Prior and posterior share the top-down state, so the posterior is the prior
corrected by what the image says.

- layer L (the top) is a vector of `latent_dims[-1]` dims with the prior N(0, I): it is what
  `encode` gives and what traversals move;
- layers 1..L-1 are maps of `latent_dims[l]` channels at the resolution the bottom-up stem
  reaches (H / 2^len(hidden_dims)), each with its own channel width.

`Hierarchy` holds the algorithm, behind the same interface as the one-layer networks (the
package docstring), and reads its parts only through `LatentLayer`'s three methods, so a model of
linear maps (tests/test_hierarchical.py's exact linear-Gaussian hierarchy) runs through the same
code as the convolutional one, `HierarchicalNetwork` (`model.network=hierarchical`). Its priors
and posteriors are its own, Gaussian, layer by layer: the model's posterior and prior parts must
be the diagonal Gaussian and N(0, I), the top layer's (config.py says so in one line otherwise).
"""

import math
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call

from vae_lightning.checks import positive, positive_int, positive_ints, require
from vae_lightning.elbo import ELBOTerms, diagonal_gaussian_log_prob, gaussian_kl_per_dim
from vae_lightning.networks import LayerPosterior, Network, Parts
from vae_lightning.networks.conv import check_conv_layers
from vae_lightning.options import conv_downsampling

Gaussian = tuple[torch.Tensor, torch.Tensor]  # (mu, log sigma^2), each shaped like z


class LatentLayer(nn.Module):
    """One stochastic layer of the top-down pass: `prior(h)` gives p(z_l | z_>l), `posterior(h, a)`
    q(z_l | x, z_>l) from the state h and the bottom-up feature a, `merge(h, z)` the state that
    the layer below reads."""

    def prior(self, h: torch.Tensor) -> Gaussian:
        raise NotImplementedError

    def posterior(self, h: torch.Tensor, a: torch.Tensor) -> Gaussian:
        raise NotImplementedError

    def merge(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Step(NamedTuple):
    """One layer's prior and posterior (None when no image was given) and the z drawn."""

    prior: Gaussian
    posterior: Gaussian | None
    z: torch.Tensor


# How the top-down pass picks z_l at layer index l from (prior, posterior).
Choice = Callable[[int, Gaussian, Gaussian | None], torch.Tensor]


def draw(gaussian: Gaussian, temperature: float = 1.0, generator=None) -> torch.Tensor:
    """mu + temperature * sigma * eps: a reparameterised draw (at temperature 1)."""
    mu, logvar = gaussian
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + temperature * eps * (0.5 * logvar).exp()


def from_posterior(index: int, prior: Gaussian, posterior: Gaussian | None) -> torch.Tensor:
    return draw(posterior)


def posterior_mean(index: int, prior: Gaussian, posterior: Gaussian | None) -> torch.Tensor:
    return posterior[0]


def log_density(z: torch.Tensor, gaussian: Gaussian) -> torch.Tensor:
    """log N(z; mu, diag(sigma^2)) summed over all but the first (batch) dim."""
    mu, logvar = gaussian
    return diagonal_gaussian_log_prob(z.flatten(1), mu.flatten(1), logvar.flatten(1))


def per_channel(values: torch.Tensor) -> torch.Tensor:
    """(batch, channels, ...) summed over the positions of each channel: (batch, channels)."""
    return values.flatten(2).sum(2) if values.dim() > 2 else values


class Hierarchy(Network):
    """The hierarchical latent model: `bottom_up(x)` gives the features [a_1, ..., a_L], `layers`
    (bottom first) the LatentLayers, `output(h)` the likelihood's parameters from the final
    state, `state_shape` the shape of the learned top state."""

    def __init__(
        self,
        bottom_up: nn.Module,
        layers: Sequence[LatentLayer],
        output: nn.Module,
        state_shape: tuple[int, ...],
    ):
        super().__init__()
        self.bottom_up, self.output = bottom_up, output
        self.layers = nn.ModuleList(layers)
        self.top_state = nn.Parameter(torch.zeros(state_shape))

    def compile_networks(self) -> None:
        """torch.compile, in place, every network the passes call (the passes themselves are
        Python loops over the layers, which the networks' compiled graphs leave out)."""
        layer_parts = [part for layer in self.layers for part in layer.children()]
        for network in (self.bottom_up, self.output, *layer_parts):
            network.compile()

    def descend(
        self, n: int, choose: Choice, features: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[Step]]:
        """The top-down pass for n images: the output parameters and each layer's Step, bottom
        first. With features, every layer also forms its posterior."""
        h = self.top_state.expand(n, *self.top_state.shape)
        steps = []
        for index in reversed(range(len(self.layers))):
            layer = self.layers[index]
            prior = layer.prior(h)
            posterior = None if features is None else layer.posterior(h, features[index])
            z = choose(index, prior, posterior)
            steps.append(Step(prior, posterior, z))
            h = layer.merge(h, z)
        return self.output(h), steps[::-1]

    def forward(self, x: torch.Tensor, z: list[torch.Tensor]) -> list[Step]:
        """Every layer's prior and posterior at the given z (one list entry per layer, k draws
        per image stacked k-major, (k * batch, ...)): the pass whose parameters DReG detaches."""
        k = len(z[0]) // len(x)
        features = [a.repeat(k, *[1] * (a.dim() - 1)) for a in self.bottom_up(x)]
        return self.descend(len(z[0]), lambda index, *_: z[index], features)[1]

    def posterior_path(self, x: torch.Tensor) -> tuple[torch.Tensor, list[Step]]:
        """The pass with every z_l at its posterior mean: deterministic reconstructions, KLs
        and posterior means for pictures and metrics."""
        return self.descend(len(x), posterior_mean, self.bottom_up(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """q(z_L | x) of the top layer: its mu and log sigma^2 side by side (batch, 2 dims)."""
        top = self.top_state.expand(len(x), *self.top_state.shape)
        return torch.cat(self.layers[-1].posterior(top, self.bottom_up(x)[-1]), dim=1)

    def decode(self, z_top: torch.Tensor) -> torch.Tensor:
        """The output parameters with z_L = z_top and every layer below at its prior mean."""
        top = len(self.layers) - 1

        def choose(index: int, prior: Gaussian, posterior: Gaussian | None) -> torch.Tensor:
            return z_top if index == top else prior[0]

        return self.descend(len(z_top), choose)[0]

    def reconstruct(self, x: torch.Tensor, parts: Parts) -> torch.Tensor:
        return self.posterior_path(x)[0]

    def sample(
        self, n: int, parts: Parts, generator=None, temperature: float = 1.0
    ) -> torch.Tensor:
        """Output parameters of n ancestral draws, each layer's prior sd times temperature."""
        return self.descend(n, lambda _, prior, __: draw(prior, temperature, generator))[0]

    def posterior_by_layer(self, x: torch.Tensor, parts: Parts) -> list[LayerPosterior]:
        """Each layer's posterior mean and per-channel KL along the posterior means (z_>l at
        E_q), so the numbers are deterministic."""
        _, steps = self.posterior_path(x)
        return [
            LayerPosterior(
                step.z.flatten(1), per_channel(gaussian_kl_per_dim(*step.posterior, *step.prior))
            )
            for step in steps
        ]

    def elbo_terms(self, x: torch.Tensor, parts: Parts) -> ELBOTerms:
        """recon = -log p(x | z) at one draw per layer, and each layer's closed-form
        KL(q(z_l | x, z_>l) || p(z_l | z_>l)) at the draws above it: kl_per_layer (batch, L)
        sums to kl, kl_per_dim (batch, sum of latent_dims) holds each channel's share."""
        output, steps = self.descend(len(x), from_posterior, self.bottom_up(x))
        kls = [gaussian_kl_per_dim(*step.posterior, *step.prior) for step in steps]
        kl_per_layer = torch.stack([kl.flatten(1).sum(1) for kl in kls], dim=1)
        return ELBOTerms(
            recon=-parts.likelihood.log_prob(output, x),
            kl=kl_per_layer.sum(1),
            kl_per_dim=torch.cat([per_channel(kl) for kl in kls], dim=1),
            kl_per_layer=kl_per_layer,
        )

    def log_importance_weights(
        self, x: torch.Tensor, k: int, parts: Parts, stop_posterior_grad: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log w_i = log p(x | z_i) + sum_l [log p(z_l,i | z_>l,i) - log q(z_l,i | x, z_>l,i)]
        for k draws of the whole hierarchy per image (k, batch), and the draws flattened and
        concatenated over the layers (k, batch, units).

        stop_posterior_grad (DReG) evaluates log q with every parameter detached and the draws
        live, and log p(x, z) at those same draws, both downstream of the returned z: a hook on
        it then reaches every path from the parameters through the draws exactly once. The
        draws still depend on the parameters through the sampling pass. It costs two more
        top-down passes than the standard estimator."""
        n = k * len(x)
        features = [a.repeat(k, *[1] * (a.dim() - 1)) for a in self.bottom_up(x)]
        output, steps = self.descend(n, from_posterior, features)
        z = torch.cat([step.z.flatten(1) for step in steps], dim=1).view(k, len(x), -1)
        if stop_posterior_grad:
            sizes = [step.z[0].numel() for step in steps]
            given = [
                part.view_as(step.z)
                for part, step in zip(z.view(n, -1).split(sizes, dim=1), steps, strict=True)
            ]
            output, priors = self.descend(n, lambda index, *_: given[index])
            detached = {name: p.detach() for name, p in self.named_parameters()}
            posteriors = functional_call(self, detached, (x, given))
            steps = [
                Step(p.prior, q.posterior, draw_)
                for p, q, draw_ in zip(priors, posteriors, given, strict=True)
            ]
        log_lik = parts.likelihood.log_prob(output.view(k, len(x), *output.shape[1:]), x)
        log_ratio = sum(
            log_density(step.z, step.prior) - log_density(step.z, step.posterior) for step in steps
        )
        return log_lik + log_ratio.view(k, len(x)), z


# --- the convolutional hierarchy -------------------------------------------------------------


def bounded(logvar: torch.Tensor, bound: float) -> torch.Tensor:
    """log sigma^2 softly held in (-bound, bound) by bound * tanh(. / bound): smooth, unlike a
    clamp, so a head pushed to the edge still gets a gradient (NVAE bounds log sigma so)."""
    return bound * torch.tanh(logvar / bound)


class ResidualCell(nn.Module):
    """x + f(x), f = SiLU, 3x3 conv, SiLU, 3x3 conv (a 1x1 conv on the skip when the width
    changes); f's last conv starts small, so a deep stack starts near the identity (VDVAE
    scales it by 1/sqrt(depth))."""

    def __init__(self, c_in: int, c_out: int, scale: float = 1.0):
        super().__init__()
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)
        last = nn.Conv2d(c_in, c_out, 3, padding=1)
        with torch.no_grad():
            last.weight.mul_(scale)
        self.residual = nn.Sequential(
            nn.SiLU(), nn.Conv2d(c_in, c_in, 3, padding=1), nn.SiLU(), last
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.residual(x)


class GaussianMap(nn.Module):
    """A 1x1 conv (or linear, for vectors) head giving mu and a bounded log sigma^2."""

    def __init__(self, head: nn.Module, logvar_bound: float):
        super().__init__()
        self.head, self.logvar_bound = head, logvar_bound

    def forward(self, h: torch.Tensor) -> Gaussian:
        mu, logvar = self.head(h).chunk(2, dim=1)
        return mu, bounded(logvar, self.logvar_bound)


class TopLayer(LatentLayer):
    """Layer L: z_L (batch, dims) with the prior N(0, I) and q(z_L | x) from the top feature; the
    merged state is unfolded into the (width_below, height, width) map of the layer below."""

    def __init__(self, dims: int, width: int, below: tuple[int, int, int], logvar_bound: float):
        super().__init__()
        self.dims = dims
        self.posterior_head = GaussianMap(nn.Linear(2 * width, 2 * dims), logvar_bound)
        self.unfold = nn.Sequential(
            nn.Linear(width + dims, math.prod(below)), nn.SiLU(), nn.Unflatten(1, below)
        )

    def prior(self, h: torch.Tensor) -> Gaussian:
        zeros = h.new_zeros(len(h), self.dims)
        return zeros, zeros

    def posterior(self, h: torch.Tensor, a: torch.Tensor) -> Gaussian:
        return self.posterior_head(torch.cat([h, a], dim=1))

    def merge(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.unfold(torch.cat([h, z], dim=1))


class MapLayer(LatentLayer):
    """A layer below the top: z_l a map of `dims` channels; prior and posterior from residual
    cells on h (and the bottom-up feature), merge h + 1x1 conv(z) through a residual cell that
    also changes the width to the layer below's (VDVAE's top-down block)."""

    def __init__(self, dims: int, width: int, width_below: int, logvar_bound: float, scale):
        super().__init__()
        self.prior_net = nn.Sequential(
            ResidualCell(width, width, scale),
            GaussianMap(nn.Conv2d(width, 2 * dims, 1), logvar_bound),
        )
        self.posterior_net = nn.Sequential(
            ResidualCell(2 * width, width, scale),
            GaussianMap(nn.Conv2d(width, 2 * dims, 1), logvar_bound),
        )
        self.project = nn.Conv2d(dims, width, 1)
        self.cell = ResidualCell(width, width_below, scale)

    def prior(self, h: torch.Tensor) -> Gaussian:
        return self.prior_net(h)

    def posterior(self, h: torch.Tensor, a: torch.Tensor) -> Gaussian:
        return self.posterior_net(torch.cat([h, a], dim=1))

    def merge(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.cell(h + self.project(z))


class BottomUp(nn.Module):
    """The stem's stride-2 4x4 convolutions (as ConvEncoder's), a residual cell per map layer
    (bottom first, each to its own width), and a dense layer to the top layer's vector."""

    def __init__(self, image_shape, hidden_dims, widths, scale):
        super().__init__()
        height, width = conv_downsampling(image_shape, len(hidden_dims))
        stem: list[nn.Module] = []
        for c_in, c_out in pairwise([image_shape[0], *hidden_dims]):
            stem += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.SiLU()]
        self.stem = nn.Sequential(*stem)
        map_widths = [hidden_dims[-1], *widths[:-1]]
        self.cells = nn.ModuleList(ResidualCell(a, b, scale) for a, b in pairwise(map_widths))
        self.top = nn.Sequential(
            nn.Flatten(), nn.Linear(map_widths[-1] * height * width, widths[-1]), nn.SiLU()
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features, a = [], self.stem(x)
        for cell in self.cells:
            a = cell(a)
            features.append(a)
        return [*features, self.top(a)]


class HierarchicalNetwork(Hierarchy):
    """The convolutional hierarchy: `n_layers` layers, bottom first, of `latent_dims` channels
    (None: latent_dim each; the top layer's, a vector, is latent_dim) and `layer_channels` of
    state (None: hidden_dims[-1] each); the stem and the output's transposed convolutions have
    the channels `hidden_dims` (as the conv VAE's); every prior's and posterior's log sigma^2 is
    softly held in (-logvar_bound, logvar_bound)."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dim: int,
        out_channels: int,
        n_layers: int = 3,
        latent_dims: Sequence[int] | None = None,
        hidden_dims: Sequence[int] = (32, 32),
        layer_channels: Sequence[int] | None = None,
        logvar_bound: float = 10.0,
    ):
        require(positive_int(n_layers), "model.network.n_layers", n_layers, "e.g. 3")
        per_layer = f"a list of n_layers={n_layers} positive integers, bottom first, or null"
        for key, value in (("latent_dims", latent_dims), ("layer_channels", layer_channels)):
            fits = value is None or (positive_ints(value) and len(value) == n_layers)
            require(fits, f"model.network.{key}", value, per_layer)
        if latent_dims is not None:
            top = f"its last, the top layer's, is model.latent_dim={latent_dim}"
            require(latent_dims[-1] == latent_dim, "model.network.latent_dims", latent_dims, top)
        check_conv_layers(image_shape, hidden_dims)
        require(positive(logvar_bound), "model.network.logvar_bound", logvar_bound, "e.g. 10")
        latent_dims = list(latent_dims or [latent_dim] * n_layers)
        widths = list(layer_channels or [hidden_dims[-1]] * n_layers)
        height, width = conv_downsampling(image_shape, len(hidden_dims))
        scale = 1 / math.sqrt(n_layers)
        below = [hidden_dims[-1], *widths[:-1]]  # the state width each layer hands down
        layers: list[LatentLayer] = [
            MapLayer(latent_dims[i], widths[i], below[i], logvar_bound, scale)
            for i in range(n_layers - 1)
        ]
        layers.append(TopLayer(latent_dim, widths[-1], (below[-1], height, width), logvar_bound))
        output: list[nn.Module] = []
        for c_in, c_out in pairwise([*reversed(hidden_dims), out_channels]):
            output += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.SiLU()]
        super().__init__(
            BottomUp(image_shape, list(hidden_dims), widths, scale),
            layers,
            nn.Sequential(*output[:-1]),  # no activation on the output parameters
            (widths[-1],),
        )
