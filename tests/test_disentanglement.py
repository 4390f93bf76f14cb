"""Disentanglement metrics on constructed codes: codes equal to the factors score at or near each
metric's maximum, a rotation of them keeps the information but loses the alignment, and
independent noise scores at chance."""

import numpy as np
import pytest
import torch

from vae_lightning.disentanglement import (
    METRICS,
    beta_vae_score,
    dci,
    dci_from_importance,
    factor_vae_score,
    mig,
    sample_factors,
    sap,
)

SIZES = (3, 4, 5, 6)
K = len(SIZES)
N = 1500
NOISE = 0.05
CHANCE_ACCURACY = float(np.mean([1 / s for s in SIZES]))  # uniform factors, uninformed guesses
# A rotation that mixes every factor into every code with equal weight: the most entangled one.
HADAMARD = (
    torch.tensor(
        [[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float64
    )
    / 2
)
PROTOCOL = {"batch_size": 32, "n_train": 400, "n_eval": 300}


def random_rotation(k: int, seed: int = 0) -> torch.Tensor:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((k, k)))
    return torch.from_numpy(q * np.sign(np.diag(r)))  # Haar-distributed


def representation(kind: str, sizes=SIZES, seed: int = 1):
    """factors (n, K) -> codes (n, K): "aligned" one latent per factor, scaled to [0, 1], plus
    small noise; "rotated"/"hadamard" the same codes rotated; "noise" independent of factors."""
    g = torch.Generator().manual_seed(seed)
    scale = (torch.tensor(sizes, dtype=torch.float64) - 1).clamp(min=1)
    rotation = {"rotated": random_rotation(len(sizes)), "hadamard": HADAMARD}.get(kind)

    def represent(factors: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(factors.shape, generator=g, dtype=torch.float64)
        if kind == "noise":
            return noise
        codes = factors.double() / scale + NOISE * noise
        return codes if rotation is None else codes @ rotation

    return represent


@pytest.fixture(scope="module")
def samples():
    """A fixed sample of factors and the codes of each kind of representation."""
    factors = torch.from_numpy(sample_factors(SIZES, N, seed=0))
    kinds = ("aligned", "rotated", "hadamard", "noise")
    return factors, {kind: representation(kind)(factors) for kind in kinds}


@pytest.fixture(scope="module")
def dci_scores(samples):
    factors, codes = samples
    return {kind: dci(c, factors, seed=0) for kind, c in codes.items()}


def test_metric_names():
    assert METRICS == ("beta_vae", "factor_vae", "mig", "sap", "dci")


# --- scores on a fixed sample ---------------------------------------------------------------


def test_aligned_codes_score_near_the_maximum(samples, dci_scores):
    factors, codes = samples
    assert mig(codes["aligned"], factors) > 0.9
    assert sap(codes["aligned"], factors, continuous=True) > 0.95
    # the classification SAP of disentanglement_lib: a one-latent linear classifier cannot
    # separate the middle values of an ordinal factor, so even aligned codes score ~0.3 here
    assert sap(codes["aligned"], factors) > 0.25
    scores = dci_scores["aligned"]
    assert scores["dci_disentanglement"] > 0.95
    assert scores["dci_completeness"] > 0.95
    assert scores["dci_informativeness"] > 0.95


@pytest.mark.parametrize("kind", ["rotated", "hadamard"])
def test_rotated_codes_keep_the_information_but_lose_the_alignment(samples, dci_scores, kind):
    factors, codes = samples
    aligned = dci_scores["aligned"]
    rotated = dci_scores[kind]
    assert rotated["dci_informativeness"] > 0.8  # trees on oblique boundaries lose a little
    assert dci(codes[kind], factors, regressor="lasso")["dci_informativeness"] > 0.95
    assert rotated["dci_disentanglement"] < aligned["dci_disentanglement"] - 0.4
    assert rotated["dci_completeness"] < aligned["dci_completeness"] - 0.4
    assert mig(codes[kind], factors) < mig(codes["aligned"], factors) - 0.4
    for continuous in (False, True):
        assert sap(codes[kind], factors, continuous) < sap(codes["aligned"], factors, continuous)
    if kind == "hadamard":  # every code mixes every factor equally: nothing is aligned
        assert rotated["dci_disentanglement"] < 0.05
        assert mig(codes[kind], factors) < 0.05
        assert sap(codes[kind], factors) < 0.05


def test_noise_scores_at_chance(samples, dci_scores):
    factors, codes = samples
    assert mig(codes["noise"], factors) < 0.03
    assert sap(codes["noise"], factors) < 0.05
    assert sap(codes["noise"], factors, continuous=True) < 0.02
    assert dci_scores["noise"]["dci_informativeness"] == pytest.approx(CHANCE_ACCURACY, abs=0.05)
    assert dci_scores["noise"]["dci_disentanglement"] < 0.1


def test_lasso_dci_agrees_with_gbt_on_aligned_codes(samples):
    factors, codes = samples
    scores = dci(codes["aligned"], factors, regressor="lasso")
    assert scores["dci_disentanglement"] > 0.95
    assert scores["dci_completeness"] > 0.95
    assert scores["dci_informativeness"] > 0.95


def test_constant_factors_are_skipped(samples):
    factors, codes = samples
    with_constant = torch.cat([factors, torch.zeros(N, 1, dtype=factors.dtype)], dim=1)
    aligned = codes["aligned"]
    assert sap(aligned, with_constant) == sap(aligned, factors)
    assert sap(aligned, with_constant, continuous=True) == sap(aligned, factors, continuous=True)
    assert dci(aligned, with_constant, regressor="lasso") == dci(aligned, factors, "lasso")
    assert mig(aligned, with_constant) == pytest.approx(mig(aligned, factors))


def test_dci_from_importance_extremes():
    assert dci_from_importance(np.eye(3)) == pytest.approx((1.0, 1.0))
    assert dci_from_importance(np.ones((3, 3))) == pytest.approx((0.0, 0.0), abs=1e-12)
    # one code for all factors: each factor is complete, the code is not disentangled
    one_code = np.zeros((3, 3))
    one_code[0] = 1
    assert dci_from_importance(one_code) == pytest.approx((0.0, 1.0), abs=1e-12)
    assert dci_from_importance(np.zeros((2, 2))) == (0.0, 0.0)


def test_sample_metrics_are_reproducible(samples):
    factors, codes = samples
    noise = codes["noise"]
    assert sap(noise, factors, seed=3) == sap(noise, factors, seed=3)
    assert dci(noise, factors, "lasso", seed=3) == dci(noise, factors, "lasso", seed=3)
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    assert sap(noise, factors, seed=rng_a) == sap(noise, factors, seed=rng_b)
    assert isinstance(sap(noise, factors), float)
    assert all(isinstance(v, float) for v in dci(noise, factors, "lasso").values())


def test_bad_arguments_are_rejected(samples):
    factors, codes = samples
    with pytest.raises(ValueError, match="regressor"):
        dci(codes["aligned"], factors, regressor="forest")
    with pytest.raises(ValueError, match="test_fraction"):
        sap(codes["aligned"], factors, test_fraction=1.5)
    with pytest.raises(ValueError, match="codes"):
        sap(codes["aligned"][:10], factors)
    with pytest.raises(ValueError, match="n_train"):
        beta_vae_score(representation("aligned"), SIZES, n_train=0)
    with pytest.raises(ValueError, match="factor_sizes"):
        factor_vae_score(representation("aligned"), (1, 1))


# --- scores that generate data with chosen factors ------------------------------------------


@pytest.mark.parametrize("score", [beta_vae_score, factor_vae_score])
def test_generative_scores_of_aligned_codes_are_one(score):
    assert score(representation("aligned"), SIZES, **PROTOCOL, seed=0) > 0.98


@pytest.mark.parametrize("score", [beta_vae_score, factor_vae_score])
def test_generative_scores_of_noise_are_chance(score):
    assert score(representation("noise"), SIZES, **PROTOCOL, seed=0) == pytest.approx(
        1 / K, abs=0.08
    )


@pytest.mark.parametrize("score", [beta_vae_score, factor_vae_score])
def test_generative_scores_skip_factors_of_one_value(score):
    sizes = (3, 1, 5, 6)  # three factors vary: chance is 1/3
    assert score(representation("aligned", sizes), sizes, **PROTOCOL, seed=0) > 0.98
    assert score(representation("noise", sizes), sizes, **PROTOCOL, seed=0) == pytest.approx(
        1 / 3, abs=0.08
    )


@pytest.mark.parametrize("score", [beta_vae_score, factor_vae_score])
def test_generative_scores_are_reproducible(score):
    def run(seed):
        return score(representation("noise"), SIZES, **PROTOCOL, seed=seed)

    assert run(7) == run(7)
    assert isinstance(run(7), float)
    gen_a, gen_b = (
        score(representation("noise"), SIZES, **PROTOCOL, seed=np.random.default_rng(2))
        for _ in range(2)
    )
    assert gen_a == gen_b


def test_factor_vae_score_prunes_collapsed_dims():
    aligned = representation("aligned")

    def with_collapsed_dim(factors: torch.Tensor) -> torch.Tensor:
        codes = aligned(factors)  # a constant extra dim would otherwise win every argmin
        return torch.cat([codes, torch.full((len(codes), 1), 0.3, dtype=codes.dtype)], dim=1)

    assert factor_vae_score(with_collapsed_dim, SIZES, **PROTOCOL) > 0.98
    assert factor_vae_score(lambda f: torch.zeros(len(f), 2), SIZES, **PROTOCOL) == 0.0


def test_represent_is_called_in_bounded_chunks():
    calls = []

    def represent(factors: torch.Tensor) -> torch.Tensor:
        calls.append(len(factors))
        assert factors.dtype == torch.int64 and factors.shape[1] == K
        return representation("aligned")(factors)

    beta_vae_score(represent, SIZES, batch_size=16, n_train=50, n_eval=20, max_rows=100)
    assert max(calls) <= 100
    assert sum(calls) == (50 + 20) * 2 * 16
