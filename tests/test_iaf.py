"""The inverse autoregressive flow posterior checked against exact answers: each step's
log-determinant is that of its autograd Jacobian, which is triangular in the step's order; the
density it gives integrates to one in 1-D and 2-D; the zero-initialised flow is exactly the
diagonal Gaussian posterior; and the doubly-reparameterised log q passes gradients through z alone.

Flows with random weights are in float64, so that the tolerances are those of the arithmetic.
"""

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.autograd.functional import jacobian
from torch.distributions import Normal

from tests.helpers import ROOT, make_config
from vae_lightning.cli import evaluate, train
from vae_lightning.elbo import reparameterize
from vae_lightning.errors import ConfigError
from vae_lightning.posteriors.gaussian import DiagonalGaussian
from vae_lightning.posteriors.iaf import IAF
from vae_lightning.priors.standard import StandardPrior

F64 = torch.float64


def random_iaf(latent_dim: int, n_steps: int = 2, seed: int = 0) -> IAF:
    """An IAF in float64 whose every weight, the steps' output layers included, is random, so that
    no step is the identity."""
    torch.manual_seed(seed)
    flow = IAF(latent_dim, n_steps=n_steps, hidden=8, context_dim=3).double()
    for parameter in flow.parameters():
        torch.nn.init.normal_(parameter, std=0.4)
    return flow


def encoder_output(flow: IAF, batch: int, seed: int = 1, log_sigma: float = 0.0) -> torch.Tensor:
    """h for `batch` images: mu around 0, log sigma^2 = 2 log_sigma, a random context."""
    generator = torch.Generator().manual_seed(seed)
    mu = 0.5 * torch.randn(batch, flow.latent_dim, generator=generator, dtype=F64)
    logvar = torch.full((batch, flow.latent_dim), 2 * log_sigma, dtype=F64)
    context = torch.randn(batch, flow.context_dim, generator=generator, dtype=F64)
    return torch.cat([mu, logvar, context], dim=-1)


def test_each_step_log_det_is_that_of_its_jacobian_which_is_triangular_in_the_step_order():
    flow = random_iaf(latent_dim=4, n_steps=2)
    context = flow.split(encoder_output(flow, batch=1))[2][0]
    z = torch.randn(4, dtype=F64)
    places = [torch.arange(1, 5), torch.arange(4, 0, -1)]  # the second step reverses the order
    for step, place in zip(flow.steps, places, strict=True):
        step_jacobian = jacobian(lambda x, step=step: step.transform(x, context)[0], z)
        log_det = step.transform(z, context)[1]
        torch.testing.assert_close(log_det, torch.linalg.slogdet(step_jacobian).logabsdet)
        # z'_i depends on z_j only where j comes before i in the step's order, or j = i.
        later = place[None, :] > place[:, None]
        earlier = place[None, :] < place[:, None]
        assert (step_jacobian[later] == 0).all()
        assert (step_jacobian[earlier] != 0).all()
        z = step.transform(z, context)[0]


def test_the_whole_flow_log_q_is_the_base_density_less_the_log_det_of_its_jacobian():
    flow = random_iaf(latent_dim=3, n_steps=3)
    h = encoder_output(flow, batch=1, log_sigma=-0.3)
    torch.manual_seed(5)
    z, log_q = flow.rsample(h)
    torch.manual_seed(5)
    mu, logvar, context = flow.split(h)
    z0 = reparameterize(mu, logvar)[0]
    flow_jacobian = jacobian(lambda x: flow.flow(x, context[0])[0], z0)
    base = Normal(mu[0], (0.5 * logvar[0]).exp()).log_prob(z0).sum()
    expected = base - torch.linalg.slogdet(flow_jacobian).logabsdet
    torch.testing.assert_close(log_q[0], expected)


def grid_integral(log_density: torch.Tensor, spacing: float) -> float:
    """The integral of exp(log_density) over a regular grid by the trapezoid rule in each dim."""
    density = log_density.exp()
    for _ in range(density.dim()):
        density = torch.trapezoid(density, dx=spacing, dim=0)
    return density.item()


@pytest.mark.parametrize("latent_dim", [1, 2])
def test_the_density_integrates_to_one_and_is_the_one_rsample_reports(latent_dim):
    """In 1-D a step's network sees only the context, so the flow is affine; in 2-D it is not:
    its log-det varies with z."""
    flow = random_iaf(latent_dim, n_steps=2, seed=latent_dim)
    h = encoder_output(flow, batch=1, log_sigma=-0.5)
    log_det = flow.flow(torch.randn(100, latent_dim, dtype=F64), flow.split(h)[2])[1]
    assert (log_det.std() > 0.1) == (latent_dim == 2)
    torch.manual_seed(0)
    z, log_q = flow.rsample(h, k=2000)
    # rsample's log q at its draws is the density found by inverting the flow at those points ...
    torch.testing.assert_close(flow.frozen_log_prob(z, h), log_q)
    # ... and that density, evaluated on a grid that holds all its mass, integrates to one.
    low, high = z.min().item() - 6, z.max().item() + 6
    points = 301
    axis = torch.linspace(low, high, points, dtype=F64)
    grid = torch.stack(torch.meshgrid([axis] * latent_dim, indexing="ij"), dim=-1)
    with torch.no_grad():
        log_density = flow.frozen_log_prob(grid.reshape(-1, latent_dim), h)
    integral = grid_integral(log_density.reshape(grid.shape[:-1]), (high - low) / (points - 1))
    assert integral == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("k", [None, 3])
def test_zero_initialised_steps_give_exactly_the_gaussian_posterior(k):
    torch.manual_seed(0)
    flow = IAF(latent_dim=5, n_steps=3, hidden=16, context_dim=4)
    h = torch.randn(6, flow.encoder_outputs)
    gaussian = DiagonalGaussian(latent_dim=5)
    torch.manual_seed(1)
    z, log_q = flow.rsample(h, k)
    torch.manual_seed(1)
    expected_z, expected_log_q = gaussian.rsample(h[:, :10], k)
    assert torch.equal(z, expected_z)
    assert torch.equal(log_q, expected_log_q)
    assert torch.equal(flow.mean(h), gaussian.mean(h[:, :10]))
    for got, expected in zip(flow.gaussian(h), gaussian.gaussian(h[:, :10]), strict=True):
        assert torch.equal(got, expected)


def test_shapes_with_and_without_k_and_the_context_broadcast_over_draws():
    flow = random_iaf(latent_dim=3)
    h = encoder_output(flow, batch=4)
    assert flow.encoder_outputs == 2 * 3 + 3
    z, log_q = flow.rsample(h)
    assert z.shape == (4, 3) and log_q.shape == (4,)
    assert flow.mean(h).shape == (4, 3)
    z, log_q = flow.rsample(h, k=5)
    assert z.shape == (5, 4, 3) and log_q.shape == (5, 4)
    # Each draw's log q is that of its own image's posterior.
    for draw in range(5):
        torch.testing.assert_close(flow.frozen_log_prob(z[draw], h), log_q[draw])
    kl, kl_per_dim = flow.kl(h, z, log_q, StandardPrior(latent_dim=3))
    assert kl_per_dim is None
    torch.testing.assert_close(kl, log_q - Normal(0.0, 1.0).log_prob(z).sum(-1))


def test_stop_posterior_grad_passes_gradients_through_z_alone():
    """DReG: the gradient of log q with q's parameters held is (d log q / dz) dz/dtheta. d log q
    / dz is found here independently, from the autograd Jacobian J of the flow at z0:
    log q(f(z0)) = log N(z0) - log |det J(z0)|, so d log q / dz = J^-T d/dz0 of the right side."""
    flow = random_iaf(latent_dim=3)
    h = encoder_output(flow, batch=2, log_sigma=-0.2).requires_grad_()
    torch.manual_seed(3)
    z, log_q = flow.rsample(h, stop_posterior_grad=True)
    leaves = [h, *flow.parameters()]
    got = torch.autograd.grad(log_q.sum(), leaves, retain_graph=True)

    torch.manual_seed(3)
    mu, logvar, context = (part.detach() for part in flow.split(h))
    z0 = reparameterize(mu, logvar)
    score = []
    for image in range(2):
        x = z0[image].requires_grad_()
        flow_jacobian = jacobian(
            lambda point, image=image: flow.flow(point, context[image])[0], x, create_graph=True
        )
        base = Normal(mu[image], (0.5 * logvar[image]).exp()).log_prob(x).sum()
        log_q_of_z0 = base - torch.linalg.slogdet(flow_jacobian).logabsdet
        (gradient_z0,) = torch.autograd.grad(log_q_of_z0, x)
        score.append(torch.linalg.solve(flow_jacobian.detach().T, gradient_z0))
    expected = torch.autograd.grad(z, leaves, grad_outputs=torch.stack(score))
    for got_part, expected_part in zip(got, expected, strict=True):
        torch.testing.assert_close(got_part, expected_part)


@pytest.mark.parametrize("key", ["n_steps", "hidden", "context_dim"])
@pytest.mark.parametrize("value", [0, 1.5])
def test_a_bad_size_is_a_config_error_naming_its_key(key, value):
    with pytest.raises(ConfigError, match=f"model.posterior.{key}={value!r} is not allowed"):
        IAF(latent_dim=4, **{key: value})


@pytest.mark.parametrize("estimator", ["standard", "dreg"])
def test_trains_through_train_py_and_evaluates_from_its_checkpoint(tmp_path, estimator):
    """model.posterior=iaf with the IWAE objective (DReG's frozen log q too): training, the IWAE
    test bound, and eval.py's from the checkpoint alone, every number finite."""
    metrics = train(
        make_config(
            tmp_path,
            "model=mlp",
            "model.network.hidden_dims=[16]",
            "model.posterior=iaf",
            "model.posterior.hidden=8",
            "model.posterior.context_dim=4",
            "model.objective=iwae",
            "model.objective.k=3",
            f"model.objective.estimator={estimator}",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=3",
            "eval.iwae_k=4",
        )  # fmt: skip
    )
    assert all(math.isfinite(metrics[key]) for key in ("test/elbo", "test/iwae_nll"))
    assert metrics["test/iwae_nll"] <= -metrics["test/elbo"] + 5  # the tighter bound, up to noise
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        eval_cfg = compose("eval", overrides=[
            f"ckpt_path={metrics['best_checkpoint']}", f"paths.output_dir={tmp_path / 'eval'}",
            f"paths.root_dir={ROOT}", "eval.iwae_k=4", "eval.iwae_images=64",
            # the training run's own data (a run of train() has no saved .hydra config)
            "data=shapes", "data.size=640", "data.eval_batch_size=64",
        ])  # fmt: skip
    evaluated = evaluate(eval_cfg)
    assert math.isfinite(evaluated["test/iwae_nll"])
