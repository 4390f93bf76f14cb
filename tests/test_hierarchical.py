"""The hierarchical VAE: its bounds against a linear-Gaussian hierarchy whose log p(x) and
posterior are exact, its networks on every image shape and depth, its training aids, and its
checkpoints.

The linear-Gaussian hierarchy z2 -> z1 -> x: z2 ~ N(0, I), z1 = A z2 + a + s1 eps1,
x = C z1 + c + sigma eps2. (z2, z1, x) is jointly Gaussian, so log p(x) and p(z1, z2 | x) are
in closed form. Its LatentLayers are linear maps run by the project's own Hierarchy (the same
top-down pass, KLs and importance weights as the convolutional model), inside the VAE module.
"""

import json
import math

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from tests.helpers import TINY, make_config, part, read_tensorboard, run_script
from vae_lightning.config import check_config
from vae_lightning.elbo import iwae_bound
from vae_lightning.errors import ConfigError
from vae_lightning.module import VAE
from vae_lightning.networks.hierarchical import Hierarchy, LatentLayer
from vae_lightning.objectives import IWAE, TrainingState
from vae_lightning.parts import check_parts

F64 = torch.float64
DX, S1, SIGMA = 5, 0.5, 0.3


class LinearTop(LatentLayer):
    """z2: prior N(0, I); q(z2 | x) = N(m2, diag(exp(logv2))) for the model's one x."""

    def __init__(self, m2, logv2):
        super().__init__()
        self.m2, self.logv2 = nn.Parameter(m2), nn.Parameter(logv2)

    def prior(self, h):
        zeros = h.new_zeros(len(h), len(self.m2))
        return zeros, zeros

    def posterior(self, h, a):
        return self.m2.expand(len(h), -1), self.logv2.expand(len(h), -1)

    def merge(self, h, z):
        return z


class LinearMiddle(LatentLayer):
    """z1: prior N(A z2 + a, s1^2 I); q(z1 | x, z2) = N(F z2 + g, diag(exp(logv1)))."""

    def __init__(self, a_matrix, a_bias, f_matrix, g, logv1):
        super().__init__()
        self.a_matrix, self.a_bias = nn.Parameter(a_matrix), nn.Parameter(a_bias)
        self.f_matrix, self.g, self.logv1 = (nn.Parameter(t) for t in (f_matrix, g, logv1))

    def prior(self, h):
        mu = h @ self.a_matrix.T + self.a_bias
        return mu, torch.full_like(mu, 2 * math.log(S1))

    def posterior(self, h, a):
        return h @ self.f_matrix.T + self.g, self.logv1.expand(len(h), -1)

    def merge(self, h, z):
        return z


class LinearOutput(nn.Module):
    def __init__(self, c_matrix, c_bias):
        super().__init__()
        self.c_matrix, self.c_bias = nn.Parameter(c_matrix), nn.Parameter(c_bias)

    def forward(self, h):
        return (h @ self.c_matrix.T + self.c_bias).view(len(h), 1, 1, -1)


class Repeat(nn.Module):
    """The bottom-up pass of the fixed q: the image itself for each layer (q ignores it)."""

    def forward(self, x):
        return [x, x]


class LinearHierarchy:
    """A random linear-Gaussian hierarchy, one x drawn from it, a random structured Gaussian q,
    and the exact quantities."""

    def __init__(self, seed: int, d2: int = 2, d1: int = 3):
        g = torch.Generator().manual_seed(seed)
        self.d2, self.d1 = d2, d1

        def randn(*shape):
            return torch.randn(*shape, generator=g, dtype=F64)

        self.a_matrix, self.a_bias = randn(self.d1, self.d2), randn(self.d1)
        self.c_matrix, self.c_bias = randn(DX, self.d1), randn(DX)
        z1 = self.a_matrix @ randn(self.d2) + self.a_bias + S1 * randn(self.d1)
        self.x = self.c_matrix @ z1 + self.c_bias + SIGMA * randn(DX)
        # q: a random Gaussian of the hierarchy's form, not the posterior
        self.q = (
            randn(self.d2),
            randn(self.d2) - 1,
            0.5 * randn(self.d1, self.d2),
            randn(self.d1),
            randn(self.d1) - 1,
        )

    def joint(self) -> MultivariateNormal:
        """p(z2, z1, x) as one Gaussian over (self.d2 + self.d1 + DX) coordinates."""
        a, c = self.a_matrix, self.c_matrix
        cov_11 = a @ a.T + S1**2 * torch.eye(self.d1, dtype=F64)
        cov_xx = c @ cov_11 @ c.T + SIGMA**2 * torch.eye(DX, dtype=F64)
        mean = torch.cat(
            [torch.zeros(self.d2, dtype=F64), self.a_bias, c @ self.a_bias + self.c_bias]
        )
        cov = torch.cat(
            [
                torch.cat([torch.eye(self.d2, dtype=F64), a.T, (c @ a).T], 1),
                torch.cat([a, cov_11, (c @ cov_11).T], 1),
                torch.cat([c @ a, c @ cov_11, cov_xx], 1),
            ]
        )
        return MultivariateNormal(mean, cov)

    def log_px(self) -> float:
        joint, d = self.joint(), self.d2 + self.d1
        return (
            MultivariateNormal(joint.mean[d:], joint.covariance_matrix[d:, d:])
            .log_prob(self.x)
            .item()
        )

    def posterior(self) -> MultivariateNormal:
        """p(z2, z1 | x), by conditioning the joint Gaussian."""
        joint, d = self.joint(), self.d2 + self.d1
        cov = joint.covariance_matrix
        gain = cov[:d, d:] @ torch.linalg.inv(cov[d:, d:])
        mean = joint.mean[:d] + gain @ (self.x - joint.mean[d:])
        return MultivariateNormal(mean, cov[:d, :d] - gain @ cov[d:, :d])

    def q_joint(self) -> MultivariateNormal:
        """q(z2, z1 | x): z2 ~ N(m2, V2), z1 | z2 ~ N(F z2 + g, V1)."""
        m2, logv2, f, g, logv1 = self.q
        v2 = torch.diag(logv2.exp())
        mean = torch.cat([m2, f @ m2 + g])
        cov = torch.cat(
            [
                torch.cat([v2, v2 @ f.T], 1),
                torch.cat([f @ v2, f @ v2 @ f.T + torch.diag(logv1.exp())], 1),
            ]
        )
        return MultivariateNormal(mean, cov)

    def analytic_elbo(self) -> float:
        """E_q[log p(x, z)] + H(q), in closed form: log p(y) is quadratic in y = (z, x), so its
        mean under q is log p at q's mean minus half the trace of p's precision times q's cov."""
        q, joint, d = self.q_joint(), self.joint(), self.d2 + self.d1
        precision = torch.linalg.inv(joint.covariance_matrix)[:d, :d]
        at_mean = joint.log_prob(torch.cat([q.mean, self.x]))
        return (at_mean - 0.5 * (precision * q.covariance_matrix).sum() + q.entropy()).item()

    def exact_q(self) -> None:
        """Make q the exact posterior (representable when z2 and z1 are scalars):
        p(z2 | x) = N(m2, v2) and p(z1 | z2, x) = N(f z2 + g, v1), by conditioning."""
        post = self.posterior()
        mean, cov = post.mean, post.covariance_matrix
        slope = cov[1:, :1] / cov[0, 0]
        self.q = (
            mean[:1],
            cov[0, 0].log().view(1),
            slope,
            mean[1:] - slope[:, 0] * mean[0],
            (cov[1, 1] - slope[0, 0] * cov[0, 1]).log().view(1),
        )

    def vae(self) -> VAE:
        """The project's VAE module hosting this hierarchy, with the fixed-sigma likelihood."""
        model = VAE((1, 1, DX), network=part("network", "mlp", hidden_dims=[4]), latent_dim=self.d2,
                    likelihood=part("likelihood", "gaussian", sigma=SIGMA))  # fmt: skip
        layers = [
            LinearMiddle(self.a_matrix, self.a_bias, *self.q[2:]),
            LinearTop(*self.q[:2]),
        ]
        model.network = Hierarchy(
            Repeat(), layers, LinearOutput(self.c_matrix, self.c_bias), (self.d2,)
        ).double()
        return model

    def images(self, n: int) -> torch.Tensor:
        return self.x.view(1, 1, 1, DX).expand(n, 1, 1, DX)


@pytest.mark.parametrize("seed", range(4))
def test_log_px_is_elbo_plus_kl_to_the_exact_posterior(seed):
    model = LinearHierarchy(seed)
    gap = kl_divergence(model.q_joint(), model.posterior()).item()
    assert model.log_px() == pytest.approx(model.analytic_elbo() + gap, abs=1e-8)
    assert gap > 0.1  # a real gap: the identity is not met by ELBO = log p(x) alone


def test_monte_carlo_elbo_of_the_module_converges_to_the_analytic_elbo():
    torch.manual_seed(0)
    model = LinearHierarchy(1)
    terms = model.vae().elbo_terms(model.images(100_000))
    torch.testing.assert_close(terms.kl_per_layer.sum(1), terms.kl)
    torch.testing.assert_close(terms.kl_per_dim.sum(1), terms.kl)
    elbo = terms.elbo.detach()
    standard_error = elbo.std().item() / math.sqrt(len(elbo))
    assert elbo.mean().item() == pytest.approx(model.analytic_elbo(), abs=4 * standard_error)
    assert 4 * standard_error < 0.1 * (model.log_px() - model.analytic_elbo())


def test_iwae_of_the_hierarchy_rises_with_k_from_the_elbo_towards_log_px():
    torch.manual_seed(0)
    model, repeats = LinearHierarchy(2), 1000
    vae, x = model.vae(), model.images(repeats)
    bounds = {}
    with torch.no_grad():
        for k in (1, 10, 100, 1000):
            estimate = iwae_bound(lambda n: vae.log_importance_weights(x, n)[0], k, repeats)
            bounds[k] = (estimate.mean().item(), estimate.std().item() / math.sqrt(repeats))
    log_px, elbo = model.log_px(), model.analytic_elbo()
    assert bounds[1][0] == pytest.approx(elbo, abs=4 * bounds[1][1])
    ks = sorted(bounds)
    for small, large in zip(ks[:-1], ks[1:], strict=True):
        assert bounds[large][0] > bounds[small][0]
        assert bounds[large][0] <= log_px + 4 * bounds[large][1]
    assert log_px - bounds[1000][0] < 0.1 * (log_px - elbo)


def test_dreg_gradient_of_the_hierarchy_agrees_with_the_standard_one():
    """Both estimate the gradient of the same IWAE bound: their means over many independent
    estimates agree for every parameter, q's and p's."""
    torch.manual_seed(0)
    model, repeats, k = LinearHierarchy(3), 4000, 8
    grads = {}
    for estimator in ("standard", "dreg"):
        vae = model.vae()
        per_image = []
        for _ in range(repeats // 500):
            loss = IWAE(k, estimator)(vae, model.images(500), TrainingState()).loss
            vae.zero_grad()
            (loss * 500).backward()  # the sum of 500 independent estimates
            parameters = vae.network.named_parameters()
            per_image.append({n: p.grad / 500 for n, p in parameters if p.grad is not None})
        grads[estimator] = {
            name: torch.stack([g[name] for g in per_image]) for name in per_image[0]
        }
    for name, standard in grads["standard"].items():
        dreg = grads["dreg"][name]
        error = (standard.var(0) / len(standard) + dreg.var(0) / len(dreg)).sqrt()
        assert ((standard.mean(0) - dreg.mean(0)).abs() <= 5 * error + 1e-9).all(), name
    assert len(grads["standard"]) == 9  # q's 5 parameters and p's 4 (the top state unused)


Q_PARAMETERS = (
    "layers.1.m2",
    "layers.1.logv2",
    "layers.0.f_matrix",
    "layers.0.g",
    "layers.0.logv1",
)


def test_with_the_exact_posterior_every_weight_is_p_x_and_dreg_gives_q_no_gradient():
    """q = p(z|x) makes every importance weight p(x, z) / q(z|x) = p(x): the bound is exact at
    any k with zero variance, and log w is flat in z, so DReG's gradient for q (the path
    derivative of log w) is exactly zero, where the standard one has a score-function term."""
    torch.manual_seed(0)
    model = LinearHierarchy(4, d2=1, d1=1)
    model.exact_q()
    vae, x = model.vae(), model.images(64)
    log_w, _ = vae.log_importance_weights(x, 16)
    torch.testing.assert_close(log_w, torch.full_like(log_w, model.log_px()), atol=1e-9, rtol=0)
    for estimator in ("dreg", "standard"):
        vae.zero_grad()
        IWAE(16, estimator)(vae, x, TrainingState()).loss.backward()
        q_grads = torch.cat([vae.network.get_parameter(n).grad.flatten() for n in Q_PARAMETERS])
        if estimator == "dreg":
            torch.testing.assert_close(q_grads, torch.zeros_like(q_grads), atol=1e-10, rtol=0)
        else:
            assert q_grads.abs().max() > 1e-3


# --- the convolutional hierarchy -------------------------------------------------------------


def tiny(shape, n_layers, **network) -> VAE:
    network = part("network", "hierarchical", n_layers=n_layers, hidden_dims=[4, 8], **network)
    top = network["latent_dims"][-1] if network["latent_dims"] else 2
    return VAE(shape, network=network, latent_dim=top)


@pytest.mark.parametrize("n_layers", [1, 2, 4])
@pytest.mark.parametrize("shape", [(c, s, s) for c in (1, 3) for s in (28, 32, 64)])
def test_forward_and_backward_on_every_depth_and_image_shape(n_layers, shape):
    torch.manual_seed(0)
    model = tiny(shape, n_layers, layer_channels=tuple(range(4, 4 + n_layers)))
    x = torch.rand(3, *shape).bernoulli()
    terms = model.elbo_terms(x)
    assert terms.kl_per_layer.shape == (3, n_layers)
    torch.testing.assert_close(terms.kl_per_layer.sum(1), terms.kl)
    assert (terms.kl_per_layer >= 0).all()
    (terms.recon + terms.kl).mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.isfinite().all(), name
    assert model.log_importance_weights(x, 4)[0].shape == (4, 3)
    assert model.encode(x)[0].shape == (3, 2)
    assert model.reconstruct(x).shape == x.shape
    assert model.sample(2, temperature=0.7).shape == (2, *shape)
    layers = model.posterior_by_layer(x)
    assert [layer.kl_per_dim.shape for layer in layers] == [(3, 2)] * n_layers
    _, steps = model.network.posterior_path(x)
    for layer, step in zip(layers, steps, strict=True):
        torch.testing.assert_close(layer.mean, step.posterior[0].flatten(1))
        (mu_q, logvar_q), (mu_p, logvar_p) = step.posterior, step.prior
        kl = kl_divergence(
            Normal(mu_q, (0.5 * logvar_q).exp()), Normal(mu_p, (0.5 * logvar_p).exp())
        )
        torch.testing.assert_close(layer.kl_per_dim.sum(1), kl.flatten(1).sum(1))
    torch.testing.assert_close(layers[-1].mean, model.encode(x)[0])


def test_sample_at_temperature_zero_is_the_decoding_of_the_prior_means():
    torch.manual_seed(0)
    model = tiny((1, 28, 28), 3).eval()
    with torch.no_grad():
        cold = model.sample(2, temperature=0.0)
        torch.testing.assert_close(cold, model.decode(torch.zeros(2, 2)))
        warm = model.sample(2, torch.Generator().manual_seed(0), temperature=1.0)
        assert not torch.allclose(warm[0], warm[1])


def test_free_bits_are_a_floor_per_layer():
    model = tiny((1, 28, 28), 2)
    terms = model.elbo_terms(torch.rand(4, 1, 28, 28).bernoulli())
    per_layer = terms.kl_per_layer.detach().mean(0)
    floor = per_layer.min().item() + 1.0  # above the smaller layer's KL
    expected = terms.recon.mean() + per_layer.clamp(min=floor).sum()
    torch.testing.assert_close(terms.loss(1.0, floor), expected)


def test_logvar_is_bounded():
    model = tiny((1, 28, 28), 2, logvar_bound=2.0)
    for parameter in model.parameters():
        parameter.data.mul_(1000)  # drive every head far out
    x = torch.rand(2, 1, 28, 28)
    _, steps = model.network.posterior_path(x)
    for step in steps:
        for _, logvar in (step.prior, step.posterior):
            assert logvar.abs().max() <= 2.0


def test_checkpoint_and_hub_folder_rebuild_an_identical_model(tmp_path):
    import lightning as L

    torch.manual_seed(0)
    model = tiny((1, 28, 28), 3, latent_dims=(2, 3, 4), layer_channels=(4, 6, 8))
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    model.save_pretrained(tmp_path / "hub")
    x = torch.rand(3, 1, 28, 28)
    for loaded in (
        VAE.load_from_checkpoint(tmp_path / "model.ckpt"),
        VAE.from_pretrained(tmp_path / "hub"),
    ):
        assert loaded.state_dict().keys() == model.state_dict().keys()
        for key, value in model.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
        torch.testing.assert_close(loaded.eval().reconstruct(x), model.eval().reconstruct(x))


def test_objectives_that_read_one_layer_are_refused_in_one_line(tmp_path):
    for overrides, key in (
        (["model/objective=beta_tc"], "model.objective"),
        (["model/objective=dip"], "model.objective"),
        (["model.prior=vamp"], "model.prior"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            check_config(make_config(tmp_path, "model=hierarchical", *overrides))
    check_config(make_config(tmp_path, "model=hierarchical", "model/objective=iwae"))
    # a value of the network's own is refused by the network, as it is built
    cfg = make_config(tmp_path, "model=hierarchical", "model.network.latent_dims=[2,3]")
    with pytest.raises(ConfigError, match=r"model\.network\.latent_dims=\[2, 3\] is not"):
        check_parts(cfg.model, (1, 28, 28))


# --- training, end to end ----------------------------------------------------------------------


@pytest.mark.parametrize(("threshold", "skipped"), [(1e-12, 3), (1e12, 0)])
def test_gradient_norm_skipping_leaves_the_weights_of_an_outlier_step_alone(
    tmp_path, threshold, skipped
):
    """With every gradient norm above the threshold, Adam sees zero gradients from the first
    step: its moments stay zero and so do its updates; with none above it, training moves."""
    import lightning as L
    from hydra.utils import instantiate

    cfg = make_config(
        tmp_path,
        "model=hierarchical",
        "model.network.n_layers=2",
        f"model.grad_skip_threshold={threshold}",
    )
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, image_shape=datamodule.image_shape, _recursive_=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = L.Trainer(
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule)
    assert model.skipped_updates.item() == skipped
    unchanged = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert unchanged == (skipped == 3)


@pytest.mark.slow
def test_train_eval_and_sample_scripts_on_a_two_layer_model(tmp_path):
    run_dir, eval_dir, samples = tmp_path / "run", tmp_path / "eval", tmp_path / "samples"
    result = run_script(
        "train.py", *TINY, "model=hierarchical", "model.network.n_layers=2",
        "model.network.latent_dims=[2,3]", "model.latent_dim=3", "model.network.hidden_dims=[4,8]",
        "model.kl_warmup=4", "model.free_bits=0.1",
        "model.grad_skip_threshold=1e6", "trainer.max_epochs=1", "eval.iwae_k=5",
        "callbacks.pictures.image_grids.temperature=0.7",
        "callbacks.pictures.kl_per_dim.every_n_epochs=1", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert len(trained["test/kl_per_layer"]) == 2 and min(trained["test/kl_per_layer"]) > 0
    assert len(trained["test/kl_per_dim"]) == 5  # 2 channels of layer 1, 3 dims of the top
    assert sum(trained["test/active_units_per_layer"]) == trained["test/active_units"]
    scalars = read_tensorboard(run_dir / "tensorboard").Tags()["scalars"]
    for tag in ("train/kl_layer1", "train/kl_layer2", "val/kl_layer1", "val/kl_layer2"):
        assert tag in scalars, tag
    assert "train/skipped_updates" in scalars
    for picture in ("samples", "reconstructions", "traversals", "kl_per_dim"):
        assert (run_dir / "images" / f"{picture}_epoch_000.png").is_file(), picture

    best = trained["best_checkpoint"]
    result = run_script(
        "eval.py", f"ckpt_path={best}", "eval.iwae_k=5", f"hydra.run.dir={eval_dir}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    # along the posterior means: deterministic, so the same from the checkpoint alone
    assert evaluated["test/active_units_per_layer"] == trained["test/active_units_per_layer"]
    assert evaluated["test/kl_per_dim"] == trained["test/kl_per_dim"]

    for mode in ("prior", "traverse"):
        result = run_script(
            "sample.py", f"ckpt_path={best}", f"mode={mode}", "n=8", "temperature=0.7",
            f"out={samples}",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    assert (samples / "prior.png").is_file() and (samples / "traverse_000.png").is_file()

    # resuming into another hierarchy is refused in one line naming the key
    from vae_lightning.cli import train

    again = make_config(
        tmp_path / "again", "model=hierarchical", "model.network.n_layers=3",
        "model.network.hidden_dims=[4,8]", f"ckpt_path={best}",
    )  # fmt: skip
    with pytest.raises(ConfigError) as error:
        train(again)
    assert str(error.value) == (
        f"model.network.n_layers=3 is not allowed: the checkpoint {best} has "
        "model.network.n_layers=2"
    )
