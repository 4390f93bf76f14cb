"""The ELBO, the KL and the IWAE bound checked against a model whose log p(x) is known exactly.

A linear-Gaussian VAE (tests/helpers.py): prior z ~ N(0, I), decoder x = W z + b + sigma * eps,
with log p(x) and p(z|x) in closed form. The estimators run through the project's own code: the VAE
module's elbo_terms (likelihood classes, reparameterisation, KL) and log_importance_weights,
reduced by elbo.iwae_bound.
"""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from tests.helpers import DZ, F64, FixedPosterior, LinearGaussian
from vae_lightning.elbo import (
    diagonal_gaussian_log_prob,
    gaussian_kl,
    iwae_bound,
    reparameterize,
)


@pytest.mark.parametrize("seed", range(5))
def test_log_px_is_elbo_plus_kl_to_the_exact_posterior(seed):
    model = LinearGaussian(seed)
    g = torch.Generator().manual_seed(100 + seed)
    mu, logvar = torch.randn(DZ, generator=g, dtype=F64), torch.randn(DZ, generator=g, dtype=F64)
    q = MultivariateNormal(mu, torch.diag(logvar.exp()))
    gap = kl_divergence(q, model.posterior()).item()
    assert model.log_px() == pytest.approx(model.analytic_elbo(mu, logvar) + gap, abs=1e-4)
    assert gap > 0.1  # a real gap, so the identity is not met by ELBO = log p(x) alone


def test_elbo_equals_log_px_when_q_is_the_exact_posterior():
    model = LinearGaussian(0, orthogonal=True)
    post = model.posterior()
    mu, logvar = post.mean, post.variance.log()
    assert model.analytic_elbo(mu, logvar) == pytest.approx(model.log_px(), abs=1e-10)
    # Every importance weight p(x, z) / q(z|x) is then p(x) itself: zero variance.
    vae = model.vae(FixedPosterior(mu, logvar))
    log_w, _ = vae.log_importance_weights(model.images(1), 50)
    torch.testing.assert_close(log_w, torch.full_like(log_w, model.log_px()), atol=1e-9, rtol=0)


def test_monte_carlo_elbo_of_the_module_converges_to_the_analytic_elbo():
    torch.manual_seed(0)
    model = LinearGaussian(1)
    mu, logvar = model.imperfect_q()
    elbo = model.vae(FixedPosterior(mu, logvar)).elbo_terms(model.images(200_000)).elbo
    standard_error = elbo.std().item() / math.sqrt(len(elbo))
    assert elbo.mean().item() == pytest.approx(
        model.analytic_elbo(mu, logvar), abs=4 * standard_error
    )
    assert 4 * standard_error < 0.1 * (model.log_px() - model.analytic_elbo(mu, logvar))


def test_iwae_rises_with_k_towards_log_px():
    torch.manual_seed(0)
    model = LinearGaussian(2)
    mu, logvar = model.imperfect_q()
    vae, repeats = model.vae(FixedPosterior(mu, logvar)), 2000
    x = model.images(repeats)
    bounds = {}
    for k in (1, 10, 100, 1000):
        estimate = iwae_bound(lambda n: vae.log_importance_weights(x, n)[0], k, repeats, 50_000)
        bounds[k] = (estimate.mean().item(), estimate.std().item() / math.sqrt(repeats))
    log_px, elbo = model.log_px(), model.analytic_elbo(mu, logvar)
    assert bounds[1][0] == pytest.approx(elbo, abs=4 * bounds[1][1])
    ks = sorted(bounds)
    for small, large in zip(ks[:-1], ks[1:], strict=True):
        assert bounds[large][0] > bounds[small][0]
        assert bounds[large][0] <= log_px + 4 * bounds[large][1]  # still a lower bound
    assert log_px - bounds[1000][0] < 0.02 * (log_px - elbo)


def test_closed_form_kl_agrees_with_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.randn(4, DZ, dtype=F64) * 1.5, torch.randn(4, DZ, dtype=F64)
    z = reparameterize(mu.expand(100_000, 4, DZ), logvar.expand(100_000, 4, DZ))
    samples = diagonal_gaussian_log_prob(z, mu, logvar) - diagonal_gaussian_log_prob(z)
    standard_error = samples.std(dim=0) / math.sqrt(len(samples))
    assert (samples.mean(dim=0) - gaussian_kl(mu, logvar)).abs().le(4 * standard_error).all()


def test_prior_sampling_has_far_larger_variance_than_importance_sampling():
    """log (1/n) sum p(x|z_i) with z_i ~ p(z) is the IWAE bound with q = p(z)."""
    torch.manual_seed(0)
    model = LinearGaussian(3)
    mu, logvar = model.imperfect_q()
    vae, repeats, n = model.vae(FixedPosterior(mu, logvar)), 500, 100
    x = model.images(repeats)
    zero = torch.zeros(DZ, dtype=F64)
    naive_vae = model.vae(FixedPosterior(zero, zero))

    def prior_draws(k: int) -> torch.Tensor:  # q = p(z): the log weights are log p(x|z_i)
        return naive_vae.log_importance_weights(x, k)[0]

    naive = iwae_bound(prior_draws, n, repeats)
    importance = iwae_bound(lambda k: vae.log_importance_weights(x, k)[0], n, repeats)
    assert naive.var() > 100 * importance.var()
    assert importance.mean().item() == pytest.approx(model.log_px(), abs=0.05)
