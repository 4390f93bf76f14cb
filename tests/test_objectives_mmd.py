"""The MMD objectives (WAE-MMD, InfoVAE): the unbiased MMD^2 estimator against closed forms, the
kernels against their formulas, and a WAE training run and a refused kernel through the command's
own code."""

import itertools
import math
import pickle

import pytest
import torch

from tests.helpers import part, read_tensorboard, run_script
from vae_lightning.cli import train
from vae_lightning.errors import ConfigError
from vae_lightning.module import VAE
from vae_lightning.objectives import TrainingState
from vae_lightning.objectives.mmd import MMD, WAE_SCALES, build_kernel, mmd_unbiased

F64 = torch.float64


def gaussian_rbf_mmd2(d: int, h2: float, mu1, s1: float, mu2, s2: float) -> float:
    """MMD^2 between N(mu1, s1^2 I) and N(mu2, s2^2 I) in d dims under k = exp(-|x-y|^2 / (2 h2)).

    For W ~ N(m, v I): E exp(-|W|^2 / (2 h2)) = (h2 / (h2 + v))^(d/2) exp(-|m|^2 / (2 (h2 + v)))
    (a Gaussian integral per dim). X - X' has m = 0, v = 2 s1^2; X - Y has m = mu1 - mu2,
    v = s1^2 + s2^2.
    """

    def expected_k(m2: float, v: float) -> float:
        return (h2 / (h2 + v)) ** (d / 2) * math.exp(-m2 / (2 * (h2 + v)))

    gap = float(((torch.as_tensor(mu1) - torch.as_tensor(mu2)) ** 2).sum())
    return expected_k(0, 2 * s1**2) + expected_k(0, 2 * s2**2) - 2 * expected_k(gap, s1**2 + s2**2)


def mean_and_standard_error(estimates: list[torch.Tensor]) -> tuple[float, float]:
    values = torch.stack(estimates)
    return values.mean().item(), (values.std() / math.sqrt(len(values))).item()


def test_kernels_are_their_formulas():
    generator = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(5, 3, generator=generator, dtype=F64),
        torch.randn(4, 3, generator=generator, dtype=F64),
    )
    squared = torch.cdist(x, y) ** 2
    imq = sum(6 * s / (6 * s + squared) for s in WAE_SCALES)  # C = 2 D s, D = 3
    torch.testing.assert_close(build_kernel("imq", WAE_SCALES)(x, y), imq)
    rbf = torch.exp(-squared / 3) + torch.exp(-squared / 12)  # s = 0.5, 2
    torch.testing.assert_close(build_kernel("rbf", [0.5, 2.0])(x, y), rbf)


@pytest.mark.parametrize(
    "mu2, s2", [((0.0, 0.0, 0.0), 1.0), ((0.5, -0.3, 0.0), 1.0), ((0.0, 0.0, 0.0), 1.6)]
)
def test_unbiased_mmd_of_two_gaussians_under_rbf_matches_the_closed_form(mu2, s2):
    d, n, scale, s1 = 3, 8, 1.0, 1.0  # small samples: a biased estimator would be far off
    kernel = build_kernel("rbf", [scale])  # exp(-|x-y|^2 / (2 d scale)): h^2 = d * scale
    expected = gaussian_rbf_mmd2(d, d * scale, torch.zeros(d), s1, torch.tensor(mu2), s2)
    generator = torch.Generator().manual_seed(1)
    estimates = [
        mmd_unbiased(
            s1 * torch.randn(n, d, generator=generator, dtype=F64),
            torch.tensor(mu2, dtype=F64) + s2 * torch.randn(n, d, generator=generator, dtype=F64),
            kernel,
        )
        for _ in range(3000)
    ]
    mean, standard_error = mean_and_standard_error(estimates)
    assert abs(mean - expected) < 4 * standard_error, (mean, expected, standard_error)


def test_the_u_statistic_is_exactly_unbiased_over_every_sample():
    """P uniform on 3 points and Q on 2: every draw of 2 points (with replacement) of each is
    equally likely, so the estimator's expectation is the average over all 36 of them, and the
    population MMD^2 is the kernel's mean over all pairs, a point paired with itself included."""
    p_points = torch.tensor([[0.0, 0.0], [1.0, 0.5], [-0.5, 2.0]], dtype=F64)
    q_points = torch.tensor([[0.3, -1.0], [1.5, 1.5]], dtype=F64)
    kernel = build_kernel("imq", [0.5, 2.0])
    population = (
        kernel(p_points, p_points).mean()
        + kernel(q_points, q_points).mean()
        - 2 * kernel(p_points, q_points).mean()
    )
    draws = [
        mmd_unbiased(p_points[list(i)], q_points[list(j)], kernel)
        for i in itertools.product(range(3), repeat=2)
        for j in itertools.product(range(2), repeat=2)
    ]
    assert len(draws) == 36
    torch.testing.assert_close(torch.stack(draws).mean(), population, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["imq", "rbf"])
def test_mmd_sees_a_shift_and_nothing_between_equal_distributions(name):
    kernel = build_kernel(name, WAE_SCALES)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(200, 4, generator=generator, dtype=F64)
    assert mmd_unbiased(x, x + 0.5, kernel) > 0.01
    same = [
        mmd_unbiased(*torch.randn(2, 16, 4, generator=generator, dtype=F64), kernel)
        for _ in range(1000)
    ]
    mean, standard_error = mean_and_standard_error(same)
    assert abs(mean) < 4 * standard_error
    assert min(same) < 0  # unbiased around 0: single estimates fall on both sides


def test_the_loss_is_infovaes_weighted_sum_and_a_batch_of_one_has_no_penalty():
    model = VAE((1, 8, 8), network=part("network", "mlp", hidden_dims=[8]), latent_dim=3)
    # pickled and back (DDP spawn, a whole-model torch.save): the kernel goes with it
    objective = pickle.loads(pickle.dumps(MMD("rbf", [1.0], mmd_weight=50.0)))
    x, state = torch.rand(6, 1, 8, 8), TrainingState(kl_weight=0.5)  # InfoVAE: alpha 0.5
    torch.manual_seed(3)
    out = objective(model, x, state)
    torch.manual_seed(3)  # the same posterior and prior draws, in the same order
    terms = model.elbo_terms(x)
    mmd = mmd_unbiased(terms.z, model.prior.sample(6), build_kernel("rbf", [1.0]))
    torch.testing.assert_close(out.loss, terms.recon.mean() + 0.5 * terms.kl.mean() + 50 * mmd)
    torch.testing.assert_close(out.logged["mmd"], mmd)
    torch.manual_seed(4)
    single = objective(model, x[:1], state)
    assert single.logged == {}
    torch.testing.assert_close(single.loss, single.terms.loss(0.5))


def test_a_hierarchy_is_refused_for_want_of_a_single_z():
    network = part("network", "hierarchical", n_layers=2, hidden_dims=[4, 8])
    model = VAE((1, 28, 28), network=network, latent_dim=2)
    with pytest.raises(ValueError, match="one latent layer"):
        MMD()(model, torch.rand(2, 1, 28, 28), TrainingState())


def test_wae_trains_and_logs_the_mmd(tmp_path, tiny_config):
    weight = 100.0
    metrics = train(
        tiny_config(
            "model/objective=mmd",  # compose takes the group by its path
            "model.beta=0",
            f"model.objective.mmd_weight={weight}",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=3",
            "+trainer.limit_val_batches=1",
            "eval.iwae_k=2",
        )
    )
    assert all(math.isfinite(metrics[key]) for key in ("test/recon", "test/mmd", "val/mmd"))
    events = read_tensorboard(tmp_path / "tensorboard")
    loss, recon, mmd = (
        {event.step: event.value for event in events.Scalars(f"train/{name}")}
        for name in ("loss", "recon", "mmd")
    )
    assert sorted(mmd) == [0, 1, 2]
    for step in mmd:  # beta = 0: no KL, the weighted MMD alone beside the reconstruction
        assert loss[step] == pytest.approx(recon[step] + weight * mmd[step], rel=1e-5)


def test_a_bad_kernel_is_refused_in_one_line_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    result = run_script(
        "train.py", "model.objective=mmd", "model.objective.kernel=foo", f"hydra.run.dir={run_dir}"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: model.objective.kernel='foo' is not allowed: one of imq, rbf"
    ]
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "arguments, key",
    [
        ({"scales": []}, "model.objective.scales"),
        ({"scales": [1.0, -0.5]}, "model.objective.scales"),
        ({"scales": "1"}, "model.objective.scales"),
        ({"mmd_weight": -1.0}, "model.objective.mmd_weight"),
    ],
)
def test_bad_scales_and_weights_name_their_key(arguments, key):
    with pytest.raises(ConfigError, match=rf"^{key}="):
        MMD(**arguments)
