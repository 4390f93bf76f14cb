"""Supervised disentanglement metrics: how well a representation's dimensions line up with the
known factors of variation of the data (the shapes data's shape, scale, rotation and position).

Two kinds of metric, because their protocols need different inputs:

- on a fixed sample of codes (N, D), the mean representation E_q[z|x], and the integer factor
  indices (N, K) of the same images: MIG (Chen et al. 2018), SAP (Kumar et al. 2018) and DCI
  (Eastwood & Williams 2018);
- on data generated with chosen factors: the BetaVAE score (Higgins et al. 2017) and the
  FactorVAE score (Kim & Mnih 2018). These take `represent(factors (n, K)) -> codes (n, D)`: in
  real use, render the images with these factor indices (data.shapes.render) and encode them to
  their posterior means; in tests, any map from factors to codes.

The protocols follow google-research/disentanglement_lib (Locatello et al. 2019), which fixed the
choices the papers left open; where this module differs it says so. Every function takes a seed
(an int or a numpy Generator), so the same inputs and seed give the same number, and returns
python floats. scikit-learn is imported by the metrics that fit its models, not with this
module: it would add about a second to the start of every run. Factors that do not vary (a
single value in the sample, or size 1 in `factor_sizes`) are skipped, as MIG skips them.
"""

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from vae_lightning.options import DCI_REGRESSORS, METRICS

__all__ = [
    "METRICS",
    "beta_vae_score",
    "dci",
    "factor_metrics",
    "factor_vae_score",
    "mig",
    "sample_factors",
    "sap",
]

MIG_BINS = 20  # equal-width bins per latent, as in Chen et al. 2018 and disentanglement_lib
# disentanglement_lib's configs for the FactorVAE score: prune_dims.threshold = 0.05 (on the std).
FACTOR_VAE_PRUNE_THRESHOLD = 0.05
# disentanglement_lib's SAP classifier: LinearSVC(C=0.01, class_weight="balanced").
SAP_SVC_C = 0.01

Seed = int | np.random.Generator
Represent = Callable[[torch.Tensor], torch.Tensor]


def _rng(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _sklearn_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31 - 1))


def _to_numpy(values: Any, dtype: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


def _check_sample(codes: Any, factors: Any) -> tuple[np.ndarray, np.ndarray]:
    codes, factors = _to_numpy(codes, np.float64), _to_numpy(factors, np.int64)
    if codes.ndim != 2 or factors.ndim != 2 or len(codes) != len(factors):
        raise ValueError(
            f"codes (N, D) and factors (N, K) must be 2-D with the same N, got {codes.shape} "
            f"and {factors.shape}"
        )
    return codes, factors


def _split(n: int, test_fraction: float, rng: np.random.Generator):
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    order = rng.permutation(n)
    n_test = max(1, round(n * test_fraction))
    return order[n_test:], order[:n_test]


def _varying(factors: np.ndarray, *parts: np.ndarray) -> list[int]:
    """Factors with more than one value in every part of the split (a classifier needs two)."""
    return [
        k for k in range(factors.shape[1]) if all(len(np.unique(factors[p, k])) > 1 for p in parts)
    ]


# --- metrics on a fixed sample of codes and factors ---------------------------------------------


def discretize(latents: torch.Tensor, n_bins: int = MIG_BINS) -> torch.Tensor:
    """Each column of (N, D) latents into n_bins equal-width bins over its own range."""
    low, high = latents.min(dim=0).values, latents.max(dim=0).values
    scaled = (latents - low) / (high - low).clamp(min=1e-12)
    return (scaled * n_bins).long().clamp(max=n_bins - 1)


def entropy(codes: torch.Tensor) -> torch.Tensor:
    """H(a) in nats of a discrete variable from its N observed integer codes."""
    p = torch.bincount(codes).double() / len(codes)
    p = p[p > 0]
    return -(p * p.log()).sum()


def mutual_information(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """I(a; b) in nats of two discrete variables from N paired integer codes (plug-in estimate)."""
    joint = torch.zeros(int(a.max()) + 1, int(b.max()) + 1, dtype=torch.float64)
    joint.index_put_((a, b), torch.ones(len(a), dtype=torch.float64), accumulate=True)
    joint /= len(a)
    outer = joint.sum(dim=1, keepdim=True) * joint.sum(dim=0, keepdim=True)
    seen = joint > 0
    return (joint[seen] * (joint[seen] / outer[seen]).log()).sum()


def mig(latents: torch.Tensor, factors: torch.Tensor, n_bins: int = MIG_BINS) -> float:
    """Mutual Information Gap (Chen et al. 2018): for each factor v_k, the gap between the two
    latents most informative about it, I(z_a; v_k) - I(z_b; v_k), over H(v_k); averaged over
    the factors that vary. 1: each factor is captured by one latent alone; 0: by none, or by two
    equally. latents (N, D) continuous codes, factors (N, K) integer factor values."""
    codes = discretize(latents.double(), n_bins)
    gaps = []
    for factor in factors.long().T:
        h = entropy(factor)
        if h <= 0:
            continue
        mi = torch.stack([mutual_information(code, factor) for code in codes.T])
        top = torch.cat([mi, mi.new_zeros(1)]).topk(2).values  # a lone latent has gap I / H
        gaps.append((top[0] - top[1]) / h)
    return float(torch.stack(gaps).mean()) if gaps else float("nan")


def sap(
    codes: Any,
    factors: Any,
    continuous: bool = False,
    test_fraction: float = 1 / 3,
    seed: Seed = 0,
) -> float:
    """Separated Attribute Predictability (Kumar et al. 2018, "Variational Inference of
    Disentangled Latent Concepts from Unlabeled Observations", Sec. 3).

    A score matrix S (D, K) says how well each latent alone predicts each factor; SAP is the
    mean over factors of the gap between the two best latents. 1: each factor is predicted by
    one latent only; 0: by none, or by two equally.

    continuous=False (default; disentanglement_lib's `continuous_factors=False`, the setting of
    its dSprites study): S_dk = test accuracy of a LinearSVC(C=0.01, class_weight="balanced") fit
    on latent d alone to factor k. With ordinal factors of many values a one-latent linear
    classifier cannot separate the middle values, so even a perfect code scores well below 1.
    continuous=True: the regression version, S_dk = squared correlation of latent d and factor k
    (on the whole sample; no split).

    codes (N, D) mean representations, factors (N, K) integer indices; the sample is split into
    train and test (test_fraction; disentanglement_lib draws 10,000 and 5,000 points).
    """
    from sklearn.svm import LinearSVC

    codes, factors = _check_sample(codes, factors)
    rng = _rng(seed)
    if continuous:
        kept = _varying(factors, np.arange(len(factors)))
        centred = codes - codes.mean(axis=0)
        targets = factors[:, kept] - factors[:, kept].mean(axis=0)
        cov = centred.T @ targets / (len(codes) - 1)
        var_code = centred.var(axis=0, ddof=1)[:, None]
        var_factor = targets.var(axis=0, ddof=1)[None, :]
        # a constant latent predicts nothing: score 0 rather than 0 / 0
        scores = np.where(var_code > 1e-12, cov**2 / np.maximum(var_code, 1e-12) / var_factor, 0.0)
    else:
        train, test = _split(len(codes), test_fraction, rng)
        kept = _varying(factors, train, test)
        scores = np.zeros((codes.shape[1], len(kept)))
        for j, k in enumerate(kept):
            for d in range(codes.shape[1]):
                classifier = LinearSVC(C=SAP_SVC_C, class_weight="balanced", random_state=0)
                classifier.fit(codes[train, d : d + 1], factors[train, k])
                predicted = classifier.predict(codes[test, d : d + 1])
                scores[d, j] = np.mean(predicted == factors[test, k])
    if not kept:
        return float("nan")
    if scores.shape[0] < 2:  # one latent: the runner-up predicts nothing
        scores = np.vstack([scores, np.zeros_like(scores)])
    top_two = np.sort(scores, axis=0)[-2:]
    return float(np.mean(top_two[1] - top_two[0]))


def _normalised_entropy(p: np.ndarray, axis: int) -> np.ndarray:
    """Entropy of the distributions along `axis` (rows of weights, normalised here), in units of
    log(their length): 0 for a point mass, 1 for uniform. A length-1 axis has entropy 0."""
    n = p.shape[axis]
    total = p.sum(axis=axis, keepdims=True)
    q = np.divide(p, total, out=np.zeros_like(p), where=total > 0)
    plogp = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
    return -plogp.sum(axis=axis) / np.log(n) if n > 1 else np.zeros(plogp.sum(axis=axis).shape)


def dci_from_importance(importance: np.ndarray) -> tuple[float, float]:
    """DCI disentanglement and completeness from an importance matrix R (D codes, K factors).

    Disentanglement: sum_d rho_d (1 - H_K(P_d.)), P_dk = R_dk / sum_k R_dk and rho_d the share of
    code d in the total importance; completeness: sum_k rho_k (1 - H_D(P_.k)) likewise per factor.
    """
    importance = np.abs(importance)
    if importance.sum() == 0:  # nothing predicts anything: neither disentangled nor complete
        return 0.0, 0.0
    code_weight = importance.sum(axis=1) / importance.sum()
    factor_weight = importance.sum(axis=0) / importance.sum()
    disentanglement = np.sum(code_weight * (1 - _normalised_entropy(importance, axis=1)))
    completeness = np.sum(factor_weight * (1 - _normalised_entropy(importance, axis=0)))
    return float(disentanglement), float(completeness)


def dci(
    codes: Any,
    factors: Any,
    regressor: str = "gbt",
    test_fraction: float = 1 / 3,
    lasso_alpha: float = 0.01,
    seed: Seed = 0,
) -> dict[str, float]:
    """Disentanglement, Completeness and Informativeness (Eastwood & Williams 2018, "A Framework
    for the Quantitative Evaluation of Disentangled Representations").

    One predictor per factor from all codes gives an importance matrix R (D, K) (see
    `dci_from_importance`) and a test score. regressor:
    - "gbt" (default; disentanglement_lib): a GradientBoostingClassifier (sklearn defaults: 100
      trees of depth 3) per factor, R_.k = its feature_importances_, informativeness = mean test
      accuracy over the factors. About 1 s per factor at N = 2000 on one core.
    - "lasso" (the paper's linear variant, much faster): a Lasso(alpha=lasso_alpha) from the
      standardised codes to the standardised factor index, R_.k = |coefficients|; the
      informativeness is still a test accuracy, of the prediction rounded to the nearest index.
    The sample is split into train and test (test_fraction; disentanglement_lib draws 10,000 and
    5,000 points). Returns {"dci_disentanglement", "dci_completeness", "dci_informativeness"}.
    """
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import Lasso

    if regressor not in DCI_REGRESSORS:
        raise ValueError(f"regressor must be one of {DCI_REGRESSORS}, got {regressor!r}")
    if lasso_alpha <= 0:
        raise ValueError(f"lasso_alpha must be positive, got {lasso_alpha}")
    codes, factors = _check_sample(codes, factors)
    rng = _rng(seed)
    train, test = _split(len(codes), test_fraction, rng)
    kept = _varying(factors, train, test)
    if not kept:
        return dict.fromkeys(
            ("dci_disentanglement", "dci_completeness", "dci_informativeness"), float("nan")
        )
    importance = np.zeros((codes.shape[1], len(kept)))
    accuracy = []
    if regressor == "lasso":
        mean, std = codes[train].mean(axis=0), codes[train].std(axis=0)
        scaled = (codes - mean) / np.where(std > 0, std, 1.0)
    for j, k in enumerate(kept):
        y = factors[:, k]
        if regressor == "gbt":
            model = GradientBoostingClassifier(random_state=_sklearn_seed(rng))
            model.fit(codes[train], y[train])
            importance[:, j] = model.feature_importances_
            predicted = model.predict(codes[test])
        else:
            y_mean, y_std = y[train].mean(), y[train].std()
            model = Lasso(alpha=lasso_alpha).fit(scaled[train], (y[train] - y_mean) / y_std)
            importance[:, j] = np.abs(model.coef_)
            index = np.rint(model.predict(scaled[test]) * y_std + y_mean)
            predicted = np.clip(index, y[train].min(), y[train].max())
        accuracy.append(np.mean(predicted == y[test]))
    disentanglement, completeness = dci_from_importance(importance)
    return {
        "dci_disentanglement": disentanglement,
        "dci_completeness": completeness,
        "dci_informativeness": float(np.mean(accuracy)),
    }


# --- metrics that generate data with chosen factors ---------------------------------------------


def sample_factors(
    factor_sizes: Sequence[int], shape: int | tuple[int, ...], seed: Seed
) -> np.ndarray:
    """Factor indices drawn independently and uniformly, shape (*shape, K): the ground-truth
    distribution of grid data such as dSprites or the shapes data."""
    rng = _rng(seed)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return np.stack([rng.integers(size, size=shape) for size in factor_sizes], axis=-1)


def _represent(represent: Represent, factors: np.ndarray, max_rows: int) -> np.ndarray:
    """Codes (..., D) of factor indices (..., K), with at most max_rows rows per call."""
    flat = factors.reshape(-1, factors.shape[-1])
    codes = [
        represent(torch.from_numpy(flat[start : start + max_rows])).detach().cpu().double().numpy()
        for start in range(0, len(flat), max_rows)
    ]
    return np.concatenate(codes).reshape(*factors.shape[:-1], -1)


def _check_protocol(factor_sizes: Sequence[int], **counts: int) -> list[int]:
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if any(size < 1 for size in factor_sizes):
        raise ValueError(f"factor_sizes must be positive, got {tuple(factor_sizes)}")
    varying = [k for k, size in enumerate(factor_sizes) if size > 1]
    if not varying:
        raise ValueError(
            f"factor_sizes has no factor of more than one value: {tuple(factor_sizes)}"
        )
    return varying


def _beta_vae_points(
    represent: Represent,
    factor_sizes: Sequence[int],
    varying: list[int],
    batch_size: int,
    n_points: int,
    rng: np.random.Generator,
    max_rows: int,
) -> tuple[np.ndarray, np.ndarray]:
    """n_points (features, label): label = a factor k, features = mean over batch_size pairs of
    |z1 - z2| for pairs of factor draws that agree in factor k only by construction."""
    labels = rng.choice(varying, size=n_points)
    per_call = max(1, max_rows // (2 * batch_size))
    features = []
    for start in range(0, n_points, per_call):
        fixed = labels[start : start + per_call]
        pairs = sample_factors(factor_sizes, (len(fixed), 2, batch_size), rng)
        shared = (np.arange(len(factor_sizes)) == fixed[:, None])[:, None, :]  # (m, 1, K)
        pairs[:, 1] = np.where(shared, pairs[:, 0], pairs[:, 1])
        codes = _represent(represent, pairs, max_rows)  # (m, 2, batch_size, D)
        features.append(np.abs(codes[:, 0] - codes[:, 1]).mean(axis=1))
    return np.concatenate(features), labels


def beta_vae_score(
    represent: Represent,
    factor_sizes: Sequence[int],
    batch_size: int = 64,
    n_train: int = 10_000,
    n_eval: int = 5_000,
    seed: Seed = 0,
    max_rows: int = 4096,
) -> float:
    """The BetaVAE disentanglement score (Higgins et al. 2017, "beta-VAE: Learning Basic Visual
    Concepts with a Constrained Variational Framework"), with disentanglement_lib's protocol and
    defaults.

    Each point: pick a factor k uniformly, draw batch_size pairs of factor vectors that share
    the value of factor k (all else independent), encode both, and take the mean over the
    pairs of |z1 - z2| (D,). A linear classifier (sklearn LogisticRegression, as
    disentanglement_lib, with max_iter raised to 1000 to converge) predicts k from it; the score
    is its accuracy on n_eval fresh points. 1: the fixed factor is always recognised; chance:
    1 / (number of varying factors).

    represent: factor indices (n, K) int64 -> codes (n, D), called with at most max_rows rows.
    """
    from sklearn.linear_model import LogisticRegression

    varying = _check_protocol(
        factor_sizes, batch_size=batch_size, n_train=n_train, n_eval=n_eval, max_rows=max_rows
    )
    rng = _rng(seed)
    args = (represent, factor_sizes, varying, batch_size)
    train_x, train_y = _beta_vae_points(*args, n_train, rng, max_rows)
    eval_x, eval_y = _beta_vae_points(*args, n_eval, rng, max_rows)
    if len(np.unique(train_y)) < 2:  # one varying factor (or n_train = 1): nothing to tell apart
        return float(np.mean(eval_y == train_y[0]))
    classifier = LogisticRegression(max_iter=1000, random_state=_sklearn_seed(rng))
    classifier.fit(train_x, train_y)
    return float(classifier.score(eval_x, eval_y))


def _factor_vae_votes(
    represent: Represent,
    factor_sizes: Sequence[int],
    varying: list[int],
    batch_size: int,
    n_points: int,
    active: np.ndarray,
    global_variance: np.ndarray,
    rng: np.random.Generator,
    max_rows: int,
) -> np.ndarray:
    """Votes (K, D_active): each point fixes one factor k across a batch, and votes for the
    active dimension of least variance after rescaling by the global variance."""
    votes = np.zeros((len(factor_sizes), int(active.sum())), dtype=np.int64)
    labels = rng.choice(varying, size=n_points)
    per_call = max(1, max_rows // batch_size)
    for start in range(0, n_points, per_call):
        fixed = labels[start : start + per_call]
        batch = sample_factors(factor_sizes, (len(fixed), batch_size), rng)
        shared = (np.arange(len(factor_sizes)) == fixed[:, None])[:, None, :]  # (m, 1, K)
        batch = np.where(shared, batch[:, :1], batch)  # the first row's value of factor k
        codes = _represent(represent, batch, max_rows)[..., active]  # (m, batch, D_active)
        local = codes.var(axis=1, ddof=1) / global_variance[active]
        np.add.at(votes, (fixed, local.argmin(axis=1)), 1)
    return votes


def factor_vae_score(
    represent: Represent,
    factor_sizes: Sequence[int],
    batch_size: int = 64,
    n_train: int = 10_000,
    n_eval: int = 5_000,
    n_variance_estimate: int = 10_000,
    prune_threshold: float = FACTOR_VAE_PRUNE_THRESHOLD,
    seed: Seed = 0,
    max_rows: int = 4096,
) -> float:
    """The FactorVAE disentanglement score (Kim & Mnih 2018, "Disentangling by Factorising",
    Sec. 4), with disentanglement_lib's protocol and defaults.

    The variance of each code dim is estimated on n_variance_estimate random factor draws; dims
    whose standard deviation is below prune_threshold (0.05, disentanglement_lib's configured
    value; the paper prunes collapsed dims by their KL) are dropped. Each point: pick a factor k,
    draw batch_size factor vectors that all share one value of factor k, encode them, divide
    the per-dim variance over the batch by the global variance (so that the scale of a code is
    irrelevant) and vote (k, argmin dim). The majority-vote classifier maps each dim to the
    factor it was voted for most on n_train points; the score is its accuracy on n_eval fresh
    points. 1: fixing any factor always stills its own dim; chance: 1 / (varying factors).
    0.0 when every dim is pruned (as disentanglement_lib).

    represent: factor indices (n, K) int64 -> codes (n, D), called with at most max_rows rows.
    """
    varying = _check_protocol(
        factor_sizes,
        batch_size=batch_size - 1,  # a variance needs two rows
        n_train=n_train,
        n_eval=n_eval,
        n_variance_estimate=n_variance_estimate - 1,
        max_rows=max_rows,
    )
    if prune_threshold < 0:
        raise ValueError(f"prune_threshold must be non-negative, got {prune_threshold}")
    rng = _rng(seed)
    global_codes = _represent(
        represent, sample_factors(factor_sizes, n_variance_estimate, rng), max_rows
    )
    variance = global_codes.var(axis=0, ddof=1)
    active = np.sqrt(variance) >= prune_threshold
    if not active.any():
        return 0.0
    args = (represent, factor_sizes, varying, batch_size)
    train_votes = _factor_vae_votes(*args, n_train, active, variance, rng, max_rows)
    eval_votes = _factor_vae_votes(*args, n_eval, active, variance, rng, max_rows)
    classifier = train_votes.argmax(axis=0)  # each active dim -> its majority factor
    correct = eval_votes[classifier, np.arange(eval_votes.shape[1])].sum()
    return float(correct / eval_votes.sum())


def factor_metrics(
    names: Sequence[str],
    codes: torch.Tensor,
    factors: torch.Tensor,
    represent: Represent | None = None,
    factor_sizes: Sequence[int] | None = None,
    seed: int = 0,
    dci_regressor: str = "gbt",
    batch_size: int = 64,
    n_train: int = 10_000,
    n_eval: int = 5_000,
) -> dict[str, float]:
    """The metrics `names` (of METRICS) of a representation, by their metrics.json names:
    mig, sap and dci from codes (N, D) and the factor indices (N, K) of the same images;
    beta_vae and factor_vae from `represent` over the grid `factor_sizes` (left out when the
    data cannot render images with chosen factors, i.e. represent is None)."""
    scores: dict[str, float] = {}
    if "mig" in names:
        scores["mig"] = mig(codes, factors)
    if "sap" in names:
        scores["sap"] = sap(codes, factors, seed=seed)
    if "dci" in names:
        scores |= dci(codes, factors, regressor=dci_regressor, seed=seed)
    if represent is not None:
        protocol = {"batch_size": batch_size, "n_train": n_train, "n_eval": n_eval, "seed": seed}
        if "beta_vae" in names:
            scores["beta_vae"] = beta_vae_score(represent, factor_sizes, **protocol)
        if "factor_vae" in names:
            scores["factor_vae"] = factor_vae_score(represent, factor_sizes, **protocol)
    return scores
