"""The disentangling objectives: beta-TCVAE's KL decomposition, FactorVAE's discriminator and
gradient separation, DIP-VAE's covariance penalty and the capacity schedule of Burgess et al."""

import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from tests.helpers import part
from vae_lightning.elbo import (
    ELBOTerms,
    diagonal_gaussian_log_prob,
    gaussian_kl_per_dim,
    reparameterize,
)
from vae_lightning.likelihoods.bernoulli import Bernoulli
from vae_lightning.module import VAE
from vae_lightning.objectives.base import TrainingState
from vae_lightning.objectives.beta_tc import BetaTC, decompose_kl, log_aggregate_weights
from vae_lightning.objectives.capacity import Capacity, capacity_at
from vae_lightning.objectives.dip import DIPVAE, dip_covariance, dip_penalty
from vae_lightning.objectives.factor import (
    FactorVAE,
    build_discriminator,
    discriminator_loss,
    permute_dims,
)

LATENT = 3


class TinyVAE(nn.Module):
    """An MLP VAE on 1x4x4 images with the one method objectives read: elbo_terms(x)."""

    def __init__(self, latent_dim: int = LATENT, pixels: int = 16, hidden: int = 16):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(pixels, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, pixels)
        )
        self.likelihood = Bernoulli((1, 4, 4))

    def elbo_terms(self, x: torch.Tensor) -> ELBOTerms:
        mu, logvar = self.encoder(x.flatten(1)).chunk(2, dim=-1)
        z = reparameterize(mu, logvar)
        logits = self.decoder(z).view_as(x)
        kl_per_dim = gaussian_kl_per_dim(mu, logvar)
        recon = -self.likelihood.log_prob(logits, x)
        return ELBOTerms(recon, kl_per_dim.sum(dim=-1), kl_per_dim, mu, logvar, z)


class FixedTerms:
    """A model stub whose elbo_terms returns the same constructed terms for any batch."""

    def __init__(self, terms: ELBOTerms):
        self.terms = terms

    def elbo_terms(self, x: torch.Tensor) -> ELBOTerms:
        return self.terms


def images(n: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))


def random_posteriors(m: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(m, d, generator=g, dtype=torch.float64)
    logvar = torch.randn(m, d, generator=g, dtype=torch.float64) * 0.5 - 1
    z = mu + (0.5 * logvar).exp() * torch.randn(m, d, generator=g, dtype=torch.float64)
    return z, mu, logvar


# --- beta-TCVAE -----------------------------------------------------------------------------


@pytest.mark.parametrize(("sampling", "dataset_size"), [("mws", 1000), ("mss", 1000), ("mss", 1)])
def test_the_three_terms_add_up_to_the_kl_estimate_of_the_batch(sampling, dataset_size):
    z, mu, logvar = random_posteriors(32, 4)
    mi, tc, dim_kl = decompose_kl(z, mu, logvar, dataset_size, sampling)
    kl = diagonal_gaussian_log_prob(z, mu, logvar) - diagonal_gaussian_log_prob(z)
    torch.testing.assert_close(mi + tc + dim_kl, kl, rtol=0, atol=1e-12)
    assert mi.shape == tc.shape == dim_kl.shape == (32,)


def test_aggregate_weights_sum_to_one_per_row_for_stratified_sampling():
    weights = log_aggregate_weights(8, 100, "mss", torch.float64).exp()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(8, dtype=torch.float64))
    assert weights[0, 0] == pytest.approx(1 / 100)
    mws = log_aggregate_weights(8, 100, "mws", torch.float64).exp()
    torch.testing.assert_close(mws, torch.full((8, 8), 1 / 800, dtype=torch.float64))


def test_mws_with_the_batch_as_data_set_is_the_batch_mixture_as_is_mss():
    z, mu, logvar = random_posteriors(16, 3)
    mws = decompose_kl(z, mu, logvar, dataset_size=1, sampling="mws")
    mss = decompose_kl(z, mu, logvar, dataset_size=16, sampling="mss")
    for a, b in zip(mws, mss, strict=True):
        torch.testing.assert_close(a, b)


def test_mws_carries_constant_offsets_in_log_dataset_size():
    """MWS's 1/(NM) weights shift log q(z) and every log q(z_d) by -log N: MI by +log N, TC by
    +(D - 1) log N and dim-KL by -D log N, whatever the batch."""
    z, mu, logvar = random_posteriors(16, 3)
    n = 50_000
    mi1, tc1, kl1 = decompose_kl(z, mu, logvar, 1, "mws")
    mi, tc, kl = decompose_kl(z, mu, logvar, n, "mws")
    torch.testing.assert_close(mi, mi1 + math.log(n))
    torch.testing.assert_close(tc, tc1 + 2 * math.log(n))
    torch.testing.assert_close(kl, kl1 - 3 * math.log(n))


def exact_log_aggregates(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor):
    """log q(z_i) and sum_d log q(z_id) of the whole data set of posteriors mu, logvar (N, D)."""
    per_dim = diagonal_gaussian_log_prob(
        z[:, None, :, None], mu[None, :, :, None], logvar[None, :, :, None]
    )
    log_n = math.log(len(mu))
    log_qz = torch.logsumexp(per_dim.sum(dim=-1), dim=1) - log_n
    return log_qz, (torch.logsumexp(per_dim, dim=1) - log_n).sum(dim=-1)


def test_mws_overstates_tc_by_up_to_d_log_n_minus_log_m():
    """The upper end of MWS's TC bias, reached exactly: a data set of N = 2^D posteriors, one at
    each corner of the hypercube {-a, a}^D, a far beyond sigma. Jointly they are far apart, so
    the batch holds all the mass at z_i and log q(z_i) comes out log M short; in each dim the
    posteriors are alike by halves, the batch (two opposite corners) holds 1 of the N/2 at z_id,
    and each log q(z_id) comes out log N short. TC = log q(z) - sum_d log q(z_d) comes out
    D log N - log M too high, log N - log M beyond the (D - 1) log N once documented."""
    d, a = 10, 10.0
    corners = torch.cartesian_prod(*[torch.tensor([-a, a], dtype=torch.float64)] * d)
    logvar = torch.zeros_like(corners)
    batch = torch.stack([corners[0], corners[-1]])  # opposite corners: apart in every dim
    z = batch + torch.randn(
        batch.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    n, m = len(corners), len(batch)

    mi, tc, dim_kl = decompose_kl(z, batch, logvar[:m], n, "mws")
    log_qz, log_prod_marginals = exact_log_aggregates(z, corners, logvar)
    log_qz_x = diagonal_gaussian_log_prob(z, batch, logvar[:m])
    bias = (tc - (log_qz - log_prod_marginals)).mean().item()

    assert bias == pytest.approx(d * math.log(n) - math.log(m), abs=1e-9)  # 68.62 nats
    assert bias > (d - 1) * math.log(n) + 6  # 62.38: the old bound, exceeded by log(N / M)
    torch.testing.assert_close(mi, log_qz_x - log_qz + math.log(m))  # MI: log M too high
    log_pz = diagonal_gaussian_log_prob(z)
    torch.testing.assert_close(dim_kl, log_prod_marginals - log_pz - d * math.log(n))


def test_stratified_sampling_of_a_batch_of_one_gives_no_mi_and_no_tc():
    """With no other image to stand for the rest of the data set, the image's own posterior
    stands for q(z): the weight 1, MI = TC = 0, and dim-KL is the single-sample KL."""
    assert log_aggregate_weights(1, 1000, "mss", torch.float64).tolist() == [[0.0]]
    mu = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    logvar = torch.tensor([[0.0, math.log(4.0)]], dtype=torch.float64)
    z = torch.tensor([[1.5, 1.0]], dtype=torch.float64)
    mi, tc, dim_kl = decompose_kl(z, mu, logvar, 1000, "mss")
    assert mi.tolist() == [0.0] and tc.tolist() == [0.0]
    # log q(z|x) = -(1^2 + (2/2)^2)/2 - log 2 - log(2 pi), log p(z) = -(1.5^2 + 1^2)/2 - log(2 pi)
    by_hand = -0.5 * 2 - math.log(2.0) + 0.5 * (1.5**2 + 1.0)
    assert dim_kl.item() == pytest.approx(by_hand, abs=1e-12)

    torch.manual_seed(0)
    model = TinyVAE()
    torch.manual_seed(1)
    out = BetaTC(alpha=1.0, beta=6.0, gamma=2.0, sampling="mss")(
        model, images(1), TrainingState(dataset_size=1000)
    )
    t = out.terms
    kl = diagonal_gaussian_log_prob(t.z, t.mu, t.logvar) - diagonal_gaussian_log_prob(t.z)
    torch.testing.assert_close(out.loss, (t.recon + 2.0 * kl).mean())
    assert out.logged["mi"].item() == 0 and out.logged["tc"].item() == 0


def gaussian_aggregate_batch(m: int, cov: torch.Tensor, s: float, g: torch.Generator):
    """A batch whose aggregate posterior is N(0, cov): mu ~ N(0, cov - s^2 I), sigma = s."""
    d = len(cov)
    chol = torch.linalg.cholesky(cov - s**2 * torch.eye(d, dtype=cov.dtype))
    mu = torch.randn(m, d, generator=g, dtype=cov.dtype) @ chol.T
    logvar = torch.full_like(mu, math.log(s**2))
    z = mu + s * torch.randn(m, d, generator=g, dtype=cov.dtype)
    return z, mu, logvar


@pytest.mark.parametrize(
    ("sampling", "dataset_size"),
    [("mss", 10**6), ("mss", "batch"), ("mws", 1)],
    ids=["mss-large-dataset", "mss-batch-is-dataset", "mws-batch-is-dataset"],
)
def test_tc_estimate_approaches_the_gaussian_closed_form_as_the_batch_grows(sampling, dataset_size):
    """What converges: the batch mean of the TC estimate, for batches of M posteriors
    N(mu_i, s^2 I) whose aggregate is N(0, Sigma), to TC(N(0, Sigma)) =
    1/2 (sum_d log Sigma_dd - log det Sigma) as M grows; with "mss" for a data set much larger
    than the batch (the batch stands for q(z) through the other M - 1 posteriors) or equal to it,
    and with "mws" only when the batch is the data set (dataset_size=1: then its weights are the
    batch's own mixture; for larger N it is offset, see the test above)."""
    cov = torch.tensor([[1.0, 0.7, 0.3], [0.7, 1.0, 0.5], [0.3, 0.5, 1.0]], dtype=torch.float64)
    closed_form = 0.5 * (cov.diagonal().log().sum() - torch.logdet(cov)).item()
    g = torch.Generator().manual_seed(0)
    errors = {}
    for m in (64, 2048):
        estimates = []
        for _ in range(3):
            z, mu, logvar = gaussian_aggregate_batch(m, cov, 0.4, g)
            n = m if dataset_size == "batch" else dataset_size
            estimates.append(decompose_kl(z, mu, logvar, n, sampling)[1].mean().item())
        errors[m] = abs(sum(estimates) / len(estimates) - closed_form)
    assert errors[2048] < 0.04
    assert errors[2048] < errors[64]


def test_beta_tc_loss_weights_the_three_terms():
    torch.manual_seed(0)
    model, x = TinyVAE(), images()
    state = TrainingState(dataset_size=1000)
    objective = BetaTC(alpha=0.5, beta=6.0, gamma=2.0, sampling="mss")
    torch.manual_seed(1)
    out = objective(model, x, state)
    torch.manual_seed(1)
    terms = model.elbo_terms(x)
    mi, tc, dim_kl = (t.mean() for t in decompose_kl(terms.z, terms.mu, terms.logvar, 1000, "mss"))
    expected = terms.recon.mean() + 0.5 * mi + 6.0 * tc + 2.0 * dim_kl
    torch.testing.assert_close(out.loss, expected)
    assert set(out.logged) == {"mi", "tc", "dim_kl"}
    torch.testing.assert_close(out.logged["tc"], tc.detach())
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_beta_tc_with_unit_weights_is_the_monte_carlo_elbo():
    torch.manual_seed(0)
    model, x = TinyVAE(), images()
    torch.manual_seed(1)
    out = BetaTC(1.0, 1.0, 1.0)(model, x, TrainingState(dataset_size=500))
    t = out.terms
    kl = diagonal_gaussian_log_prob(t.z, t.mu, t.logvar) - diagonal_gaussian_log_prob(t.z)
    torch.testing.assert_close(out.loss, (t.recon + kl).mean())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"alpha": -1.0}, "alpha"),
        ({"beta": -0.1}, "beta"),
        ({"gamma": float("nan")}, "gamma"),
        ({"sampling": "iwae"}, "sampling"),
    ],
)
def test_beta_tc_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        BetaTC(**kwargs)


# --- FactorVAE ------------------------------------------------------------------------------


def test_permute_dims_shuffles_each_dim_independently():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(4096, generator=g)
    z = torch.stack([z1, z1, torch.randn(4096, generator=g)], dim=1)
    permuted = permute_dims(z, torch.Generator().manual_seed(1))
    for d in range(3):  # every marginal is kept
        torch.testing.assert_close(permuted[:, d].sort().values, z[:, d].sort().values)
    assert torch.corrcoef(z.T)[0, 1] > 0.99
    assert abs(torch.corrcoef(permuted.T)[0, 1]) < 0.1  # the dependence is gone


def train_discriminator(sample, steps=150, batch=256, seed=0) -> float:
    """Train a small discriminator alone on batches from sample(n, g); its accuracy on fresh
    batches afterwards."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    discriminator = build_discriminator(2, hidden=32, layers=2)
    optimiser = torch.optim.Adam(discriminator.parameters(), lr=5e-3)
    for _ in range(steps):
        loss, _ = discriminator_loss(discriminator, sample(batch, g), g)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        accuracies = [discriminator_loss(discriminator, sample(2048, g), g)[1] for _ in range(4)]
    return float(torch.stack(accuracies).mean())


def test_discriminator_separates_correlated_latents_from_their_permutations():
    def correlated(n, g):
        z1 = torch.randn(n, 1, generator=g)
        return torch.cat([z1, z1 + 0.1 * torch.randn(n, 1, generator=g)], dim=1)

    assert train_discriminator(correlated) > 0.85


def test_discriminator_cannot_separate_independent_latents():
    accuracy = train_discriminator(lambda n, g: torch.randn(n, 2, generator=g))
    assert 0.4 < accuracy < 0.6


def grads(module: nn.Module) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in module.parameters()]


def test_each_network_gets_the_gradient_of_its_own_loss_only():
    torch.manual_seed(0)
    model, x = TinyVAE(), images(64)
    objective = FactorVAE(
        latent_dim=LATENT, gamma=10.0, discriminator_hidden=16, discriminator_layers=2
    )
    state = TrainingState(kl_weight=1.0)

    def run(pick):
        model.zero_grad(set_to_none=True)
        objective.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same z and the same permutation every time
        losses = objective.losses(model, x, state)
        pick(losses).backward()
        return grads(model), grads(objective.discriminator), losses

    full_vae, full_disc, losses = run(lambda ls: ls.vae_loss + ls.discriminator_loss)
    vae_vae, vae_disc, _ = run(lambda ls: ls.vae_loss)
    disc_vae, disc_disc, _ = run(lambda ls: ls.discriminator_loss)

    assert all(g is None for g in vae_disc)  # the VAE loss leaves the discriminator alone
    assert all(g is None for g in disc_vae)  # and the discriminator loss the VAE
    for full, own in zip(full_vae, vae_vae, strict=True):
        torch.testing.assert_close(full, own)
    for full, own in zip(full_disc, disc_disc, strict=True):
        torch.testing.assert_close(full, own)
    assert losses.logged["tc"] != 0
    assert 0 <= losses.logged["discriminator_accuracy"] <= 1

    # forward's loss is the sum, and one optimiser step with the extra group moves both networks
    torch.manual_seed(1)
    out = objective(model, x, state)
    torch.testing.assert_close(out.loss, losses.vae_loss + losses.discriminator_loss)
    assert set(out.logged) >= {"tc", "discriminator_loss", "discriminator_accuracy"}
    (group,) = objective.param_groups()
    assert group["lr"] == 1e-4 and group["betas"] == (0.5, 0.9)
    disc_ids = {id(p) for p in group["params"]}
    assert disc_ids == {id(p) for p in objective.discriminator.parameters()}
    optimiser = torch.optim.Adam([{"params": list(model.parameters())}, group], lr=1e-3)
    before_vae, before_disc = grads_free_copy(model), grads_free_copy(objective.discriminator)
    optimiser.zero_grad()
    out.loss.backward()
    optimiser.step()
    assert any(not torch.equal(a, b) for a, b in zip(before_vae, model.parameters(), strict=True))
    assert any(
        not torch.equal(a, b)
        for a, b in zip(before_disc, objective.discriminator.parameters(), strict=True)
    )


def test_factor_vae_on_a_batch_of_one_trains_the_vae_alone():
    """One image gives the discriminator no pair of samples to compare: its loss is 0, nothing
    of it is logged, and the VAE's loss is the ELBO loss plus gamma times D's logit difference."""
    torch.manual_seed(0)
    model = TinyVAE()
    objective = FactorVAE(latent_dim=LATENT, gamma=10.0, discriminator_hidden=16)
    assert discriminator_loss(objective.discriminator, torch.zeros(1, LATENT)) is None
    torch.manual_seed(1)
    losses = objective.losses(model, images(1), TrainingState(kl_weight=0.5))
    logits = objective.discriminator(losses.terms.z)
    by_hand = losses.terms.loss(0.5) + 10.0 * (logits[:, 0] - logits[:, 1]).mean()
    torch.testing.assert_close(losses.vae_loss, by_hand)
    assert losses.discriminator_loss.item() == 0
    assert set(losses.logged) == {"tc", "vae_loss"}
    objective.zero_grad(set_to_none=True)
    (losses.vae_loss + losses.discriminator_loss).backward()
    assert all(p.grad is None for p in objective.discriminator.parameters())
    assert all(p.grad is not None for p in model.parameters())


def grads_free_copy(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"latent_dim": 0}, "latent_dim"),
        ({"gamma": -1.0}, "gamma"),
        ({"discriminator_lr": 0.0}, "discriminator_lr"),
        ({"discriminator_betas": (0.5, 1.5)}, "discriminator_betas"),
        ({"discriminator_layers": 0}, "discriminator_layers"),
    ],
)
def test_factor_vae_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FactorVAE(**{"latent_dim": 4, **kwargs})


# --- DIP-VAE --------------------------------------------------------------------------------


def test_dip_penalty_is_zero_for_the_identity_and_grows_with_off_diagonal_mass():
    eye = torch.eye(4, dtype=torch.float64)
    assert dip_penalty(eye, 10.0, 100.0) == 0
    off = torch.ones(4, 4, dtype=torch.float64) - eye
    penalties = [dip_penalty(eye + a * off, 10.0, 100.0).item() for a in (0.1, 0.2, 0.4)]
    assert penalties == pytest.approx([10.0 * a**2 * 12 for a in (0.1, 0.2, 0.4)])
    assert dip_penalty(2 * eye, 10.0, 3.0).item() == pytest.approx(3.0 * 4)


def test_dip_ii_covariance_is_the_expected_sample_covariance_of_z():
    g = torch.Generator().manual_seed(0)
    m, d, draws = 16, 3, 20_000
    mu = torch.randn(m, d, generator=g, dtype=torch.float64) @ torch.tensor(
        [[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.5]], dtype=torch.float64
    )
    logvar = torch.randn(m, d, generator=g, dtype=torch.float64) * 0.3 - 0.5
    z = mu + (0.5 * logvar).exp() * torch.randn(draws, m, d, generator=g, dtype=torch.float64)
    centred = z - z.mean(dim=1, keepdim=True)
    expected = torch.einsum("smd,sme->de", centred, centred) / (draws * (m - 1))
    torch.testing.assert_close(dip_covariance(mu, logvar, "ii"), expected, rtol=0, atol=0.01)
    torch.testing.assert_close(dip_covariance(mu, logvar, "i"), torch.cov(mu.T))


def test_dip_vae_defaults_and_loss():
    assert DIPVAE("i", lambda_od=10.0).lambda_d == 100.0
    assert DIPVAE("ii", lambda_od=10.0).lambda_d == 10.0
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    kl_per_dim = gaussian_kl_per_dim(mu, logvar)
    terms = ELBOTerms(torch.rand(8, generator=g), kl_per_dim.sum(-1), kl_per_dim, mu, logvar, mu)
    state = TrainingState(kl_weight=0.5)
    out = DIPVAE("ii", lambda_od=2.0)(FixedTerms(terms), None, state)
    penalty = dip_penalty(dip_covariance(mu, logvar, "ii"), 2.0, 2.0)
    torch.testing.assert_close(out.loss, terms.loss(0.5) + penalty)
    torch.testing.assert_close(out.logged["dip_penalty"], penalty)


def test_dip_vae_on_a_batch_of_one_sees_no_spread_of_the_means():
    """Cov[mu] of one image is 0: DIP-I's C is 0 (penalty lambda_d * D, no gradient), DIP-II's
    is diag(sigma^2) of the image."""
    mu = torch.tensor([[0.3, -1.2, 2.0]], requires_grad=True)
    logvar = torch.tensor([[math.log(0.5), math.log(2.0), 0.0]])
    torch.testing.assert_close(dip_covariance(mu, logvar, "i"), torch.zeros(3, 3))
    torch.testing.assert_close(
        dip_covariance(mu, logvar, "ii"), torch.diag(torch.tensor([0.5, 2.0, 1.0]))
    )
    kl_per_dim = gaussian_kl_per_dim(mu, logvar)
    terms = ELBOTerms(torch.tensor([7.0]), kl_per_dim.sum(-1), kl_per_dim, mu, logvar, mu)
    state = TrainingState(kl_weight=1.0)
    dip_i = DIPVAE("i", lambda_od=10.0)(FixedTerms(terms), None, state)
    assert dip_i.logged["dip_penalty"].item() == pytest.approx(100.0 * 3)
    (grad,) = torch.autograd.grad(dip_i.loss - terms.loss(1.0), mu)
    assert grad.abs().max() < 1e-6
    dip_ii = DIPVAE("ii", lambda_od=10.0)(FixedTerms(terms), None, state)
    assert dip_ii.logged["dip_penalty"].item() == pytest.approx(10.0 * (0.5**2 + 1.0**2))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"variant": "iii"}, "variant"),
        ({"lambda_od": -1.0}, "lambda_od"),
        ({"lambda_d": -2.0}, "lambda_d"),
    ],
)
def test_dip_vae_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DIPVAE(**kwargs)


# --- controlled capacity --------------------------------------------------------------------


def test_capacity_rises_linearly_then_holds():
    assert capacity_at(0, 25.0, 100_000) == 0.0
    assert capacity_at(50_000, 25.0, 100_000) == 12.5
    assert capacity_at(100_000, 25.0, 100_000) == 25.0
    assert capacity_at(250_000, 25.0, 100_000) == 25.0
    assert capacity_at(50, 10.0, 100, c_min=2.0) == 6.0
    assert capacity_at(0, 10.0, 0) == 10.0  # no schedule: full capacity at once


def test_capacity_loss_on_a_constructed_batch():
    kl = torch.tensor([4.0, 5.0, 6.0])
    terms = ELBOTerms(recon=torch.tensor([1.0, 2.0, 3.0]), kl=kl)
    model, objective = FixedTerms(terms), Capacity()  # gamma 1000, C: 0 -> 25 over 100k steps
    for step, capacity, loss in [
        (0, 0.0, 5002.0),
        (20_000, 5.0, 2.0),
        (50_000, 12.5, 7502.0),
        (10**6, 25.0, 20_002.0),
    ]:
        out = objective(model, None, TrainingState(step=step))
        assert out.loss.item() == pytest.approx(loss)
        assert out.logged["capacity"].item() == pytest.approx(capacity)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"gamma": -1.0}, "gamma"),
        ({"c_max": -1.0}, "c_max"),
        ({"n_steps": -5}, "n_steps"),
        ({"c_min": 30.0}, "c_max"),
    ],
)
def test_capacity_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Capacity(**kwargs)


# --- training on plain dataloaders, with last batches of one image ---------------------------


MLP_8 = part("network", "mlp", hidden_dims=[8])


def fit_on_plain_dataloaders(objective: dict, n_train: int, n_val: int, batch_size: int) -> VAE:
    """One epoch of Trainer.fit, given DataLoaders of random 1x4x4 images (no datamodule)."""
    g = torch.Generator().manual_seed(0)

    def loader(n: int) -> DataLoader:
        return DataLoader(
            TensorDataset(torch.rand(n, 1, 4, 4, generator=g), torch.zeros(n)),
            batch_size=batch_size,
        )

    torch.manual_seed(0)
    model = VAE((1, 4, 4), network=MLP_8, latent_dim=LATENT, objective=objective)
    trainer = L.Trainer(
        max_epochs=1,
        log_every_n_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader(n_train), loader(n_val))
    assert trainer.state.finished
    return model


BETA_TC = "vae_lightning.objectives.beta_tc.BetaTC"


def test_beta_tc_fit_on_plain_dataloaders_knows_the_training_set_size():
    """Without a datamodule the size comes from the dataloader fit iterates, not N = 1 (with
    which stratified sampling makes MI and TC exactly 0)."""
    model = fit_on_plain_dataloaders({"_target_": BETA_TC, "sampling": "mss"}, 40, 16, 8)
    assert model.dataset_size == 40
    metrics = model.trainer.callback_metrics
    for stage in ("train", "val"):  # posteriors near the prior at the start: small, not 0
        assert metrics[f"{stage}/mi"] > 0.01 and metrics[f"{stage}/tc"] != 0


class Stream(IterableDataset):
    """Images with no len(): how many there are is unknown."""

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        return ((torch.rand(1, 4, 4, generator=g), 0) for _ in range(16))


def test_beta_tc_refuses_training_data_of_unknown_size():
    model = VAE((1, 4, 4), network=MLP_8, latent_dim=LATENT, objective={"_target_": BETA_TC})
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match="BetaTC needs the number of training images"):
        trainer.fit(model, DataLoader(Stream(), batch_size=8))


@pytest.mark.parametrize(
    "objective",
    [
        {"_target_": "vae_lightning.objectives.dip.DIPVAE", "variant": "i"},
        {"_target_": "vae_lightning.objectives.dip.DIPVAE", "variant": "ii"},
        {"_target_": BETA_TC, "sampling": "mss"},
        {"_target_": "vae_lightning.objectives.factor.FactorVAE", "latent_dim": LATENT,
         "discriminator_hidden": 8, "discriminator_layers": 1},
    ],
    ids=["dip-i", "dip-ii", "beta_tc-mss", "factor"],
)  # fmt: skip
def test_a_last_batch_of_one_image_trains_and_validates(objective):
    """17 training and 9 validation images in batches of 8: both end on a batch of one."""
    model = fit_on_plain_dataloaders(objective, 17, 9, 8)
    metrics = model.trainer.callback_metrics
    logged = [name for name in metrics if name.startswith(("train/", "val/"))]
    assert "val/loss" in logged and "train/loss" in logged
    assert all(math.isfinite(metrics[name]) for name in logged), metrics
