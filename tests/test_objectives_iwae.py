"""The IWAE objective checked on a linear-Gaussian VAE, whose log p(x) and ELBO are exact.

The model (tests/helpers.py): prior z ~ N(0, I), decoder x = W z + b + sigma * eps, with
log p(x) and p(z|x) in closed form, inside the project's VAE module. The encoder is learnable and
deliberately imperfect (diagonal, mean shifted by half a posterior sd, variance doubled), so the
ELBO, the IWAE bounds and log p(x) all differ.

Gradient estimators are compared draw by draw: a batch of B copies of one image whose encoder
has its own (mu, logvar) parameters per copy, so one backward pass gives B independent
per-image gradients with respect to the encoder's parameters. Statistical checks use fixed
seeds and tolerances of a few standard errors.
"""

import math

import pytest
import torch
from torch import nn

from tests.helpers import DX, DZ, LinearGaussian
from vae_lightning.module import VAE
from vae_lightning.objectives import ELBO, TrainingState
from vae_lightning.objectives.iwae import ESTIMATORS, IWAE


class AmortisedEncoder(nn.Module):
    """nn.Linear x -> (mu, logvar): the exact posterior mean map, shifted, and twice its
    marginal variances, so q is diagonal and imperfect for every x."""

    def __init__(self, model: LinearGaussian):
        super().__init__()
        self.linear = nn.Linear(DX, 2 * DZ).double()
        slope, cov = model.posterior_map()
        variance = cov.diag()
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.weight[:DZ] = slope
            self.linear.bias[:DZ] = -slope @ model.b + 0.5 * variance.sqrt()
            self.linear.bias[DZ:] = (2 * variance).log()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.linear(x.flatten(1)).chunk(2, dim=-1)


class PerImagePosterior(nn.Module):
    """An encoder with its own (mu, logvar) parameters for each of the batch's B images."""

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor, batch: int):
        super().__init__()
        self.mu = nn.Parameter(mu.expand(batch, DZ).clone())
        self.logvar = nn.Parameter(logvar.expand(batch, DZ).clone())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mu, self.logvar

    def per_image_gradients(self) -> torch.Tensor:
        """(B, 2 DZ): each image's gradient of the batch-mean loss, times B to undo the mean."""
        return len(self.mu) * torch.cat([self.mu.grad, self.logvar.grad], dim=-1)


def gradients(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters()}


def mean_and_error(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean over dim 0 and its standard error."""
    return samples.mean(dim=0), samples.std(dim=0) / math.sqrt(len(samples))


def test_iwae_with_one_sample_is_the_elbo_objective():
    truth = LinearGaussian(0)
    vae = truth.vae(AmortisedEncoder(truth))
    x = truth.draw(64).view(64, 1, 1, DX)
    state = TrainingState(kl_weight=0.7, free_bits=0.05)
    results = []
    for objective in (IWAE(k=1), ELBO()):
        vae.zero_grad()
        torch.manual_seed(0)
        out = objective(vae, x, state)
        out.loss.backward()
        results.append((out, gradients(vae)))
    (iwae, iwae_grads), (elbo, elbo_grads) = results
    assert torch.equal(iwae.loss, elbo.loss)
    assert iwae.terms is not None and torch.equal(iwae.terms.kl, elbo.terms.kl)
    for name, grad in elbo_grads.items():
        assert torch.equal(iwae_grads[name], grad), name


def test_log_weight_path_with_one_sample_averages_to_the_analytic_elbo():
    truth = LinearGaussian(1)
    vae = truth.vae(AmortisedEncoder(truth))
    x = truth.images(200_000)
    torch.manual_seed(0)
    log_w, z = vae.log_importance_weights(x, 1)
    assert log_w.shape == (1, 200_000) and z.shape == (1, 200_000, DZ)
    estimate, standard_error = mean_and_error(log_w[0])
    elbo = truth.analytic_elbo(*truth.imperfect_q())
    assert estimate.item() == pytest.approx(elbo, abs=4 * standard_error.item())
    assert 4 * standard_error < 0.1 * (truth.log_px() - elbo)
    # The DReG objective at k = 1 takes this path: its loss is minus the mean log weight.
    torch.manual_seed(0)
    out = IWAE(k=1, estimator="dreg")(vae, x, TrainingState())
    assert out.terms is None
    torch.testing.assert_close(out.loss, -log_w.mean(), atol=1e-10, rtol=0)
    torch.testing.assert_close(out.logged["iwae_bound"], log_w.mean(), atol=1e-10, rtol=0)


@torch.no_grad()
def test_iwae_bound_exceeds_the_elbo_and_rises_with_k_to_log_px():
    truth = LinearGaussian(2)
    vae = truth.vae(AmortisedEncoder(truth))
    repeats = 2000
    x = truth.images(repeats)
    torch.manual_seed(0)
    elbo_loss = ELBO()(vae, x, TrainingState()).loss.item()
    elbo = truth.analytic_elbo(*truth.imperfect_q())
    assert -elbo_loss == pytest.approx(elbo, abs=0.5)
    bounds = {}
    for k in (5, 50, 500):
        torch.manual_seed(k)
        out = IWAE(k=k)(vae, x, TrainingState())
        torch.manual_seed(k)
        log_w, _ = vae.log_importance_weights(x, k)
        per_image = torch.logsumexp(log_w, dim=0) - math.log(k)
        torch.testing.assert_close(out.loss, -per_image.mean(), atol=1e-10, rtol=0)
        torch.testing.assert_close(out.logged["iwae_bound"], per_image.mean())
        bounds[k] = tuple(t.item() for t in mean_and_error(per_image))
    log_px = truth.log_px()
    assert bounds[5][0] > elbo + 4 * bounds[5][1]  # the loss is below the ELBO loss
    assert bounds[5][0] > -elbo_loss
    ks = sorted(bounds)
    for small, large in zip(ks[:-1], ks[1:], strict=True):
        assert bounds[large][0] > bounds[small][0]
        assert bounds[large][0] <= log_px + 4 * bounds[large][1]  # still a lower bound
    assert log_px - bounds[500][0] < 0.05 * (log_px - elbo)


def per_image_encoder_gradients(
    truth: LinearGaussian, batch: int, k: int, estimator: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor, VAE]:
    """The loss, the (batch, 2 DZ) per-image encoder gradients, and the model (decoder grads)."""
    encoder = PerImagePosterior(*truth.imperfect_q(), batch)
    vae = truth.vae(encoder)
    torch.manual_seed(seed)
    out = IWAE(k=k, estimator=estimator)(vae, truth.images(batch), TrainingState())
    out.loss.backward()
    return out.loss.detach(), encoder.per_image_gradients(), vae


def test_dreg_loss_is_the_bound_and_its_decoder_gradient_the_standard_one():
    truth = LinearGaussian(3)
    standard_loss, _, standard = per_image_encoder_gradients(truth, 256, 10, "standard", 0)
    dreg_loss, _, dreg = per_image_encoder_gradients(truth, 256, 10, "dreg", 0)
    torch.testing.assert_close(dreg_loss, standard_loss, atol=1e-12, rtol=0)
    # theta's gradient is sum_i w~_i grad log w_i in both: the same at the same draws.
    for name, grad in gradients(standard.network.decoder).items():
        torch.testing.assert_close(
            gradients(dreg.network.decoder)[name], grad, atol=1e-10, rtol=1e-10
        )
    # Without gradients (validation) DReG is just the bound.
    with torch.no_grad():
        torch.manual_seed(0)
        out = IWAE(k=10, estimator="dreg")(dreg, truth.images(256), TrainingState())
    torch.testing.assert_close(out.loss, standard_loss, atol=1e-12, rtol=0)


def biased_stop_gradient_estimator(truth: LinearGaussian, batch: int, k: int) -> torch.Tensor:
    """IWAE with q's parameters stopped in log q but no second w~ factor (IWAE-STL): biased for
    k > 1 (Tucker et al. 2019), the mistake the test below must be able to see."""
    encoder = PerImagePosterior(*truth.imperfect_q(), batch)
    vae = truth.vae(encoder)
    log_w, _ = vae.log_importance_weights(truth.images(batch), k, stop_posterior_grad=True)
    (-(torch.logsumexp(log_w, dim=0)).mean()).backward()
    return encoder.per_image_gradients()


@pytest.mark.parametrize(("k", "standard_draws"), [(5, 200_000), (50, 20_000)])
def test_dreg_encoder_gradient_is_unbiased(k, standard_draws):
    """The mean DReG gradient equals the exact gradient of IWAE_k, estimated as the mean of many
    plain (unbiased) estimator draws, within their joint standard error."""
    truth = LinearGaussian(4)
    _, standard, _ = per_image_encoder_gradients(truth, standard_draws, k, "standard", 1)
    _, dreg, _ = per_image_encoder_gradients(truth, 20_000, k, "dreg", 2)
    (reference, reference_error), (estimate, error) = map(mean_and_error, (standard, dreg))
    joint_error = (reference_error.pow(2) + error.pow(2)).sqrt()
    assert (estimate - reference).abs().le(4 * joint_error).all()
    assert joint_error.norm() < 0.15 * reference.norm()  # precise enough to mean something
    if k == 5:  # and a biased estimator is rejected by the same check, by far
        biased, _ = mean_and_error(biased_stop_gradient_estimator(truth, 20_000, k))
        assert (biased - reference).abs().gt(10 * joint_error).any()


def test_dreg_encoder_gradient_has_far_lower_variance_at_large_k():
    truth = LinearGaussian(5)
    variance_ratios = {}
    for k in (5, 50):
        _, standard, _ = per_image_encoder_gradients(truth, 4000, k, "standard", 1)
        _, dreg, _ = per_image_encoder_gradients(truth, 4000, k, "dreg", 2)
        variance_ratios[k] = (standard.var(dim=0).sum() / dreg.var(dim=0).sum()).item()
    assert variance_ratios[5] > 1.5
    assert variance_ratios[50] > 50  # the plain estimator's noise grows relative to its signal
    assert variance_ratios[50] > 5 * variance_ratios[5]


def test_bad_construction_values_are_rejected():
    assert ESTIMATORS == ("standard", "dreg")
    with pytest.raises(ValueError, match=r"^model\.objective\.k=0 is not allowed: a positive"):
        IWAE(k=0)
    with pytest.raises(ValueError, match=r"^model\.objective\.estimator='foo' is not allowed"):
        IWAE(k=5, estimator="foo")
