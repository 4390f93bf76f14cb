"""The priors checked against exact answers: the VampPrior's density integrates to one, agrees
with torch.distributions' mixture, reduces to N(0, I) when its one component is N(0, I), and its
samples and Monte Carlo KLs have the moments they should.

Statistical checks use fixed seeds and tolerances of a few standard errors of the estimate.
"""

import copy
import math

import pytest
import torch
from torch import nn
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from tests.helpers import part
from vae_lightning.elbo import gaussian_kl, gaussian_kl_per_dim, reparameterize
from vae_lightning.errors import ConfigError
from vae_lightning.parts import build_part
from vae_lightning.priors.standard import StandardPrior
from vae_lightning.priors.vamp import VampPrior

F64 = torch.float64
IMAGE_SHAPE = (1, 2, 2)


class TinyEncoder(nn.Module):
    """A random linear encoder of tiny images: mu within a few units of 0, sigma in [0.6, 1.6]."""

    def __init__(self, latent_dim: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        pixels = math.prod(IMAGE_SHAPE)
        self.to_mu = nn.Linear(pixels, latent_dim).double()
        self.to_logvar = nn.Linear(pixels, latent_dim).double()
        nn.init.normal_(self.to_mu.weight, std=1.0)
        nn.init.normal_(self.to_logvar.weight, std=0.3)
        nn.init.zeros_(self.to_logvar.bias)
        self.seen_pixels: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.seen_pixels.append(x.detach())
        flat = x.flatten(1)
        return self.to_mu(flat), self.to_logvar(flat).tanh()


def standard_normal_posterior(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An 'encoder' whose posterior is N(0, I) for every image: the VampPrior is then N(0, I)."""
    zeros = torch.zeros(x.shape[0], 3, dtype=x.dtype)
    return zeros, zeros


def vamp(latent_dim: int, n_pseudo_inputs: int = 3, seed: int = 0) -> VampPrior:
    encoder = TinyEncoder(latent_dim, seed)
    return VampPrior(encoder, IMAGE_SHAPE, latent_dim, n_pseudo_inputs).double()


def reference_mixture(prior: VampPrior) -> MixtureSameFamily:
    mu, logvar = prior.components()
    components = Independent(Normal(mu, (0.5 * logvar).exp()), 1)
    return MixtureSameFamily(Categorical(logits=torch.zeros(len(mu), dtype=F64)), components)


@torch.no_grad()
def test_vamp_log_prob_integrates_to_one_in_1d():
    prior = vamp(latent_dim=1)
    grid = torch.linspace(-20, 20, 40_001, dtype=F64)
    density = prior.log_prob(grid[:, None]).exp()
    assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, abs=1e-3)


@torch.no_grad()
def test_vamp_log_prob_integrates_to_one_in_2d():
    prior = vamp(latent_dim=2)
    axis = torch.linspace(-12, 12, 801, dtype=F64)
    z = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1)  # (801, 801, 2)
    density = prior.log_prob(z)
    assert density.shape == (801, 801)
    integral = torch.trapezoid(torch.trapezoid(density.exp(), axis, dim=1), axis)
    assert integral.item() == pytest.approx(1.0, abs=1e-3)


@torch.no_grad()
def test_vamp_log_prob_matches_torch_mixture_for_leading_dims():
    prior = vamp(latent_dim=2, n_pseudo_inputs=5)
    z = 3 * torch.randn(7, 4, 2, dtype=F64)  # (S, B, D)
    expected = reference_mixture(prior).log_prob(z)
    assert prior.log_prob(z).shape == (7, 4)
    torch.testing.assert_close(prior.log_prob(z), expected, atol=1e-8, rtol=0)


@torch.no_grad()
def test_vamp_kl_per_dim_uses_each_dimensions_marginal_mixture():
    prior = vamp(latent_dim=3, n_pseudo_inputs=4)
    mu, logvar = torch.randn(5, 3, dtype=F64), torch.randn(5, 3, dtype=F64)
    z = reparameterize(mu.expand(6, 5, 3), logvar.expand(6, 5, 3))
    prior_mu, prior_logvar = prior.components()
    marginals = MixtureSameFamily(
        Categorical(logits=torch.zeros(4, dtype=F64)),
        Normal(prior_mu.T, (0.5 * prior_logvar.T).exp()),  # batch of D 1-D mixtures
    )
    log_q = Normal(mu, (0.5 * logvar).exp()).log_prob(z)
    expected = log_q - marginals.log_prob(z)
    torch.testing.assert_close(prior.kl_per_dim(mu, logvar, z), expected, atol=1e-10, rtol=0)
    # The joint KL is of the joint mixture, which is not the product of its marginals.
    assert prior.kl(mu, logvar, z).shape == (6, 5)
    assert not torch.allclose(prior.kl_per_dim(mu, logvar, z).sum(-1), prior.kl(mu, logvar, z))


@torch.no_grad()
def test_vamp_log_prob_at_evaluation_size():
    """8192 rows against 500 components in 50 dimensions, the size evaluation uses."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(4, 100)).double()
    prior = VampPrior(lambda x: encoder(x).chunk(2, dim=-1), IMAGE_SHAPE, 50).double()
    z = torch.randn(8192, 50, dtype=F64)
    log_p = prior.log_prob(z)
    assert log_p.shape == (8192,) and log_p.isfinite().all()
    expected = reference_mixture(prior).log_prob(z[:64])
    torch.testing.assert_close(log_p[:64], expected, atol=1e-8, rtol=0)


@torch.no_grad()
def test_one_standard_normal_pseudo_posterior_is_the_standard_prior():
    prior = VampPrior(standard_normal_posterior, IMAGE_SHAPE, 3, n_pseudo_inputs=1).double()
    z = 2 * torch.randn(10, 4, 3, dtype=F64)
    torch.testing.assert_close(prior.log_prob(z), StandardPrior(3).log_prob(z), atol=1e-12, rtol=0)

    # Its Monte Carlo KLs converge to the closed forms against N(0, I).
    torch.manual_seed(1)
    mu, logvar = 1.5 * torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    draws = 100_000
    z = reparameterize(mu.expand(draws, 4, 3), logvar.expand(draws, 4, 3))
    for estimate, exact in (
        (prior.kl(mu, logvar, z), gaussian_kl(mu, logvar)),
        (prior.kl_per_dim(mu, logvar, z), gaussian_kl_per_dim(mu, logvar)),
    ):
        assert estimate.shape == z.shape[: exact.dim() + 1]
        standard_error = estimate.std(dim=0) / math.sqrt(draws)
        assert (estimate.mean(dim=0) - exact).abs().le(4 * standard_error).all()


@torch.no_grad()
def test_vamp_samples_have_the_mixture_mean_and_variance():
    prior = vamp(latent_dim=2, n_pseudo_inputs=3)
    n = 200_000
    z = prior.sample(n, torch.Generator().manual_seed(0))
    assert z.shape == (n, 2) and z.dtype == F64
    mu, logvar = prior.components()
    mean = mu.mean(dim=0)
    variance = (logvar.exp() + mu.pow(2)).mean(dim=0) - mean.pow(2)
    assert (z.mean(dim=0) - mean).abs().le(4 * (variance / n).sqrt()).all()
    centred = z - z.mean(dim=0)
    fourth_moment = centred.pow(4).mean(dim=0)
    variance_error = ((fourth_moment - variance.pow(2)) / n).sqrt()
    assert (centred.pow(2).mean(dim=0) - variance).abs().le(4 * variance_error).all()
    # The same generator state gives the same draws.
    same = prior.sample(5, torch.Generator().manual_seed(3))
    torch.testing.assert_close(same, prior.sample(5, torch.Generator().manual_seed(3)))


class Owner(nn.Module):
    """A model holding its encoder and a VampPrior that encodes through a bound method."""

    def __init__(self):
        super().__init__()
        self.encoder = TinyEncoder(2)
        self.prior = VampPrior(self.encode, IMAGE_SHAPE, 2, n_pseudo_inputs=4)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)


def test_vamp_state_dict_holds_only_its_pseudo_inputs():
    prior = vamp(latent_dim=2, n_pseudo_inputs=4)  # encode is an nn.Module: still not registered
    assert list(prior.state_dict()) == ["pseudo_input_logits"]
    assert prior.state_dict()["pseudo_input_logits"].shape == (4, *IMAGE_SHAPE)
    assert [name for name, _ in prior.named_parameters()] == ["pseudo_input_logits"]

    owner = Owner().double()
    assert list(owner.prior.state_dict()) == ["pseudo_input_logits"]
    assert sorted(owner.state_dict()) == sorted(
        ["prior.pseudo_input_logits"] + [f"encoder.{name}" for name in owner.encoder.state_dict()]
    )
    # A copy of the owner encodes with the copy's encoder, not the original's.
    twin = copy.deepcopy(owner)
    assert twin.prior.encode.__self__ is twin
    with torch.no_grad():
        twin.encoder.to_mu.bias.add_(1.0)
    torch.testing.assert_close(twin.prior.components()[0], owner.prior.components()[0] + 1.0)


def test_pseudo_inputs_stay_images_and_learn_through_log_prob():
    prior = vamp(latent_dim=2, n_pseudo_inputs=4)
    with torch.no_grad():
        prior.pseudo_input_logits.mul_(40)  # far outside [0, 1] before the sigmoid
    prior.encode.seen_pixels.clear()
    prior.log_prob(torch.randn(8, 2, dtype=F64)).sum().backward()
    (pixels,) = prior.encode.seen_pixels
    assert pixels.shape == (4, *IMAGE_SHAPE)
    assert pixels.min() >= 0 and pixels.max() <= 1
    assert prior.pseudo_input_logits.grad.abs().sum() > 0
    assert prior.encode.to_mu.weight.grad.abs().sum() > 0  # the shared encoder learns too


def test_standard_prior():
    prior = StandardPrior(3).double()
    assert prior.analytic_kl and not VampPrior.analytic_kl
    assert list(prior.state_dict()) == []
    z = prior.sample(6, torch.Generator().manual_seed(0))
    assert z.shape == (6, 3) and z.dtype == F64 and z.device == torch.device("cpu")
    torch.testing.assert_close(z, prior.sample(6, torch.Generator().manual_seed(0)))
    expected = Normal(torch.zeros(3, dtype=F64), 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(prior.log_prob(z), expected)
    assert prior.log_prob(z.expand(2, 6, 3)).shape == (2, 6)
    mu, logvar = torch.randn(6, 3, dtype=F64), torch.randn(6, 3, dtype=F64)
    torch.testing.assert_close(prior.kl(mu, logvar, z), gaussian_kl(mu, logvar))
    torch.testing.assert_close(prior.kl_per_dim(mu, logvar, z), gaussian_kl_per_dim(mu, logvar))


def test_priors_are_built_from_their_configs_with_what_they_name():
    """Each prior takes the context its __init__ names (N(0, I) no image shape or encoder), and
    checks its own values, naming the key."""
    context = {"latent_dim": 3, "image_shape": IMAGE_SHAPE, "encode": standard_normal_posterior}
    assert isinstance(build_part(part("prior", "standard"), **context), StandardPrior)
    built = build_part(part("prior", "vamp", n_pseudo_inputs=7), **context)
    assert isinstance(built, VampPrior) and built.pseudo_input_logits.shape == (7, *IMAGE_SHAPE)
    with pytest.raises(ConfigError, match="model.prior.n_pseudo_inputs=0 is not allowed"):
        build_part(part("prior", "vamp", n_pseudo_inputs=0), **context)
