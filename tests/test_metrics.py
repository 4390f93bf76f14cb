import math

import pytest
import torch

from vae_lightning.config import ConfigError, check_config
from vae_lightning.elbo import ELBOTerms, FixedGaussian, LearnedGaussian, iwae_bound
from vae_lightning.metrics import active_units, bits_per_dim, mig, mutual_information


def test_active_units_count_dims_whose_posterior_mean_varies_over_the_data():
    torch.manual_seed(0)
    scales = torch.tensor([1.0, 0.2, 0.05, 0.0, 3.0])  # variances 1, 0.04, 0.0025, 0, 9
    mu = torch.randn(5000, 5) * scales + torch.tensor([0.0, 5.0, -5.0, 2.0, 0.0])
    assert active_units(mu) == 3
    assert active_units(mu, threshold=2.0) == 1


def test_mutual_information_of_a_variable_with_itself_is_its_entropy():
    codes = torch.arange(8).repeat(100)  # uniform over 8 values: H = log 8
    assert mutual_information(codes, codes).item() == pytest.approx(math.log(8))
    assert mutual_information(codes, torch.zeros_like(codes)).item() == pytest.approx(0.0)


class TestMIG:
    n = 4000

    def factors(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return torch.stack(
            [
                torch.randint(4, (self.n,), generator=g),
                torch.randint(5, (self.n,), generator=g),
                torch.zeros(self.n, dtype=torch.long),  # a constant factor carries no information
            ],
            dim=1,
        )

    def noisy(self, values: torch.Tensor, scale: float = 0.01) -> torch.Tensor:
        return values.float() + scale * torch.randn(len(values))

    def test_one_latent_per_factor_scores_one(self):
        torch.manual_seed(0)
        f = self.factors()
        latents = torch.stack([torch.randn(self.n), self.noisy(f[:, 1]), self.noisy(f[:, 0])], 1)
        assert mig(latents, f) == pytest.approx(1.0, abs=0.01)

    def test_a_factor_split_over_two_equal_latents_has_no_gap(self):
        torch.manual_seed(0)
        f = self.factors()
        latents = torch.stack([self.noisy(f[:, 0]), self.noisy(f[:, 0]), self.noisy(f[:, 1])], 1)
        assert mig(latents, f) == pytest.approx(0.5, abs=0.01)  # factor 0 gap 0, factor 1 gap 1

    def test_latents_unrelated_to_the_factors_score_near_zero(self):
        torch.manual_seed(0)
        assert mig(torch.randn(self.n, 4), self.factors()) < 0.02


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
    likelihood = LearnedGaussian(channels=2, sigma=0.5, per="channel")
    with torch.no_grad():
        likelihood.log_sigma[1] = math.log(0.25)
    mean, x = torch.rand(3, 2, 4, 4), torch.rand(3, 2, 4, 4)
    sigma = torch.tensor([0.5, 0.25]).view(2, 1, 1)
    reference = torch.distributions.Normal(mean, sigma).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(likelihood.log_prob(mean, x), reference)
    likelihood.log_prob(mean, x).sum().backward()
    assert likelihood.log_sigma.grad.abs().min() > 0
    assert LearnedGaussian(channels=3, per="image").log_sigma.numel() == 1


def test_iwae_does_not_depend_on_how_the_draws_are_chunked():
    """k = 7 draws in passes of 3, 3 and 1, or in one pass: the same bound, which is above the
    one-draw bound (so a chunk lost or mis-weighted would show)."""
    torch.manual_seed(0)
    decoder = torch.nn.Sequential(torch.nn.Linear(2, 5), torch.nn.Unflatten(1, (1, 1, 5)))
    likelihood, n = FixedGaussian(0.3), 4000
    x = torch.rand(1, 1, 1, 5).expand(n, 1, 1, 5)
    mu, logvar = torch.zeros(n, 2), torch.full((n, 2), 0.5)
    with torch.no_grad():
        chunked = iwae_bound(likelihood, decoder, x, mu, logvar, 7, max_rows=3 * n)
        whole = iwae_bound(likelihood, decoder, x, mu, logvar, 7, max_rows=7 * n)
        single = iwae_bound(likelihood, decoder, x, mu, logvar, 1)
    error = 4 * (chunked.var() + whole.var()).sqrt().item() / math.sqrt(n)
    assert chunked.mean().item() == pytest.approx(whole.mean().item(), abs=error)
    assert chunked.mean().item() > single.mean().item() + error


def test_bits_per_dim_converts_nats_per_image():
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "override",
    [
        "model.likelihood=gaussian_lerned",
        "model.gaussian_sigma_per=pixel",
        "model.kl_warmup=-1",
        "model.kl_warmup_unit=hours",
        "model.free_bits=-0.5",
        "eval.iwae_k=0",
    ],
)
def test_bad_remedy_and_eval_values_are_config_errors(tiny_config, override):
    key, value = override.split("=")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_config(tiny_config(override))
