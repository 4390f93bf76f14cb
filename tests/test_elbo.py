import math

import pytest
import torch

from tests.helpers import FixedPosterior, SideBySide, part
from vae_lightning.elbo import ELBOTerms, gaussian_kl, iwae_bound, reparameterize
from vae_lightning.likelihoods.bernoulli import Bernoulli
from vae_lightning.likelihoods.gaussian import FixedGaussian
from vae_lightning.likelihoods.gaussian_learned import LearnedGaussian
from vae_lightning.module import VAE


def test_gaussian_kl_matches_hand_computation():
    mu = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    logvar = torch.tensor([[0.0, 0.0], [math.log(4.0), 0.0]])
    # Row 0 is the prior itself. Row 1, dim 0: -1/2 (1 + ln 4 - 4 - 1); dim 1: -1/2 (1 + 0 - 1 - 4).
    expected = torch.tensor([0.0, -0.5 * (1 + math.log(4) - 4 - 1) + 2.0])
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)


def test_gaussian_kl_agrees_with_torch_distributions_and_is_non_negative():
    torch.manual_seed(0)
    mu, logvar = torch.randn(64, 5) * 2, torch.randn(64, 5)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(5), torch.ones(5))
    reference = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), reference)
    assert (gaussian_kl(mu, logvar) >= 0).all()


def test_bernoulli_log_prob_matches_hand_computation():
    logits = torch.tensor([[[[0.0, 2.0]]]])  # one 1x1x2 image
    x = torch.tensor([[[[1.0, 0.25]]]])
    p = 1 / (1 + math.exp(-2.0))
    expected = math.log(0.5) + 0.25 * math.log(p) + 0.75 * math.log(1 - p)
    torch.testing.assert_close(Bernoulli((1, 1, 1)).log_prob(logits, x), torch.tensor([expected]))


def test_bernoulli_log_prob_is_finite_for_extreme_logits():
    logits = torch.tensor([[[[200.0, -200.0]]]])
    x = torch.tensor([[[[0.0, 1.0]]]])
    torch.testing.assert_close(Bernoulli((1, 1, 1)).log_prob(logits, x), torch.tensor([-400.0]))


def test_gaussian_log_prob_is_the_full_density_with_its_constant():
    torch.manual_seed(0)
    mean, x = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    reference = torch.distributions.Normal(mean, 0.2).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(FixedGaussian((1, 1, 1), 0.2).log_prob(mean, x), reference)
    # by hand for one pixel: log N(0.5; 0.3, 0.2^2) = -1/2 (1)^2 - log 0.2 - 1/2 log 2 pi
    one = FixedGaussian((1, 1, 1), 0.2).log_prob(
        torch.full((1, 1, 1, 1), 0.3), torch.full((1, 1, 1, 1), 0.5)
    )
    torch.testing.assert_close(
        one, torch.tensor([-0.5 - math.log(0.2) - 0.5 * math.log(2 * math.pi)])
    )


def test_loss_is_recon_plus_beta_kl_and_elbo_its_negative():
    terms = ELBOTerms(recon=torch.tensor([10.0, 20.0]), kl=torch.tensor([1.0, 3.0]))
    assert terms.loss(beta=1.0).item() == pytest.approx(17.0)
    assert terms.loss(beta=4.0).item() == pytest.approx(15.0 + 4 * 2.0)
    torch.testing.assert_close(terms.elbo, torch.tensor([-11.0, -23.0]))


def test_elbo_terms_are_per_sample_and_signed_as_costs():
    torch.manual_seed(0)
    x = torch.rand(5, 1, 4, 4)
    terms = VAE(
        (1, 4, 4), network=part("network", "mlp", hidden_dims=[8]), latent_dim=2
    ).elbo_terms(x)
    assert terms.recon.shape == terms.kl.shape == (5,)
    assert (terms.recon > 0).all() and (terms.kl >= 0).all()


def test_reparameterize_has_the_posterior_moments_and_passes_gradients():
    torch.manual_seed(0)
    mu = torch.tensor([1.0, -2.0], requires_grad=True)
    logvar = torch.tensor([0.0, math.log(0.25)], requires_grad=True)
    z = reparameterize(mu.expand(200_000, 2), logvar.expand(200_000, 2))
    torch.testing.assert_close(z.mean(0), torch.tensor([1.0, -2.0]), atol=0.01, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 0.5]), atol=0.01, rtol=0)
    z.sum().backward()
    assert mu.grad is not None and logvar.grad is not None and logvar.grad.abs().sum() > 0


def test_free_bits_floor_the_kl_of_each_dim_in_the_loss_only():
    kl_per_dim = torch.tensor([[0.1, 2.0], [0.3, 4.0]], requires_grad=True)  # batch means 0.2, 3
    terms = ELBOTerms(recon=torch.tensor([10.0, 20.0]), kl=kl_per_dim.sum(1), kl_per_dim=kl_per_dim)
    assert terms.loss(beta=1.0).item() == pytest.approx(15.0 + 3.2)
    loss = terms.loss(beta=2.0, free_bits=0.5)
    assert loss.item() == pytest.approx(15.0 + 2.0 * (0.5 + 3.0))
    torch.testing.assert_close(terms.elbo, torch.tensor([-12.1, -24.3]))  # unchanged
    loss.backward()
    # The dim under its floor gets no push towards the prior; the other the usual beta / batch.
    torch.testing.assert_close(kl_per_dim.grad, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))


def test_learned_gaussian_is_the_full_density_with_one_sigma_per_channel():
    likelihood = LearnedGaussian((2, 1, 1), sigma=0.5, per="channel")
    with torch.no_grad():
        likelihood.log_sigma[1] = math.log(0.25)
    mean, x = torch.rand(3, 2, 4, 4), torch.rand(3, 2, 4, 4)
    sigma = torch.tensor([0.5, 0.25]).view(2, 1, 1)
    reference = torch.distributions.Normal(mean, sigma).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(likelihood.log_prob(mean, x), reference)
    likelihood.log_prob(mean, x).sum().backward()
    assert likelihood.log_sigma.grad.abs().min() > 0
    assert LearnedGaussian((3, 1, 1), per="image").log_sigma.numel() == 1


def test_iwae_does_not_depend_on_how_the_draws_are_chunked():
    """k = 7 draws in passes of 3, 3 and 1, or in one pass: the same bound, which is above the
    one-draw bound (so a chunk lost or mis-weighted would show)."""
    torch.manual_seed(0)
    model = VAE((1, 1, 5), network=part("network", "mlp", hidden_dims=[4]), latent_dim=2,
                likelihood=part("likelihood", "gaussian", sigma=0.3))  # fmt: skip
    model.network.decoder = torch.nn.Sequential(
        torch.nn.Linear(2, 5), torch.nn.Unflatten(1, (1, 1, 5))
    )
    model.network.encoder = SideBySide(FixedPosterior(torch.zeros(2), torch.full((2,), 0.5)))
    n = 4000
    x = torch.rand(1, 1, 1, 5).expand(n, 1, 1, 5)
    with torch.no_grad():

        def draws(k: int) -> torch.Tensor:
            return model.log_importance_weights(x, k)[0]

        chunked = iwae_bound(draws, 7, n, max_rows=3 * n)
        whole = iwae_bound(draws, 7, n, max_rows=7 * n)
        single = iwae_bound(draws, 1, n)
    error = 4 * (chunked.var() + whole.var()).sqrt().item() / math.sqrt(n)
    assert chunked.mean().item() == pytest.approx(whole.mean().item(), abs=error)
    assert chunked.mean().item() > single.mean().item() + error
