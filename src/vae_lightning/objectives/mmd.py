"""The MMD objectives: WAE-MMD (Tolstikhin, Bousquet, Gelly & Schoelkopf 2018, "Wasserstein
Auto-Encoders") and InfoVAE's MMD form (Zhao, Song & Ermon 2019, "InfoVAE: Balancing Learning and
Inference in Variational Autoencoders").

Both pull the aggregate posterior q(z) = E_p(x) q(z|x) towards the prior p(z) with the maximum
mean discrepancy between the batch's posterior samples and as many samples of the prior:

    MMD^2(P, Q) = E k(x, x') + E k(y, y') - 2 E k(x, y),   x, x' ~ P,  y, y' ~ Q,

estimated without bias by the U-statistic (`mmd_unbiased`). Unlike the KL of the ELBO, which
pulls each image's q(z|x) towards p(z), it leaves the single posteriors free, so z may keep more
information about x.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from vae_lightning.errors import ConfigError
from vae_lightning.objectives.base import Objective, ObjectiveOutput, TrainingState

KERNELS = ("imq", "rbf")
# WAE's code: the bandwidths, relative to the prior's 2 D sigma_p^2, its IMQ kernel sums over
WAE_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)

Kernel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def gram_matrix(
    x: torch.Tensor, y: torch.Tensor, name: str, scales: Sequence[float]
) -> torch.Tensor:
    """k(x, y) of x (n, D) and y (m, D), (n, m), summed over the scales s, each with C = 2 D s
    (WAE's C = 2 D sigma_p^2 times s, for a prior of unit variance):

        imq: C / (C + |x - y|^2)     (inverse multiquadric: heavy tails, so its gradient still
                                      reaches a sample far from the other distribution)
        rbf: exp(-|x - y|^2 / C)     (a Gaussian kernel of bandwidth h^2 = C / 2 = D s)

    A sum of characteristic kernels is characteristic: MMD = 0 only for equal distributions.
    """
    # Differences, not the |x|^2 + |y|^2 - 2 x.y expansion: exact at distance 0 (the diagonal
    # of k(x, x)), and no cdist, whose gradient at distance 0 is not defined.
    squared = (x[:, None, :] - y[None, :, :]).pow(2).sum(dim=-1)
    base = 2 * x.shape[-1]
    if name == "imq":
        return sum(base * s / (base * s + squared) for s in scales)
    return sum(torch.exp(-squared / (base * s)) for s in scales)


def build_kernel(name: str, scales: Sequence[float]) -> Kernel:
    """`gram_matrix` of the named kernel over the scales, as a function of (x, y); a partial,
    not a closure, so that the objective holding it still pickles."""
    return functools.partial(gram_matrix, name=name, scales=tuple(scales))


def mmd_unbiased(x: torch.Tensor, y: torch.Tensor, kernel: Kernel) -> torch.Tensor:
    """The unbiased estimate of MMD^2 between the distributions of x (n, D) and y (m, D), n, m >= 2
    (Gretton et al. 2012, "A kernel two-sample test", Lemma 6):

        sum_{i != j} k(x_i, x_j) / (n (n - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
            - 2 sum_{i, j} k(x_i, y_j) / (n m).

    The diagonals k(x_i, x_i) are left out: with them (the V-statistic) the estimate is biased
    upwards, and by the most where k(x, x) dwarfs the other pairs' values. It can be negative.
    """
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 samples of each, got {n} and {m}")

    def mean_off_diagonal(gram: torch.Tensor) -> torch.Tensor:
        size = len(gram)
        return (gram.sum() - gram.diagonal().sum()) / (size * (size - 1))

    return (
        mean_off_diagonal(kernel(x, x)) + mean_off_diagonal(kernel(y, y)) - 2 * kernel(x, y).mean()
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class MMD(Objective):
    """loss = recon + kl_weight * KL + mmd_weight * MMD^2(q(z), p(z)), the first two batch means
    as in the ELBO objective (model.beta, its warm-up and free bits apply), the last the
    unbiased estimate between the batch's posterior samples z ~ q(z|x) and as many draws of
    `model.prior.sample` (any prior; the draws use the global RNG, whose state checkpoints
    keep, so a resumed run draws the same).

    - WAE-MMD: model.beta=0. Tolstikhin et al.'s penalty, with their IMQ kernel over the scales
      of their code by default. Their encoder is deterministic or Gaussian; here it is the
      model's Gaussian q(z|x), its variance unpenalised (it may shrink towards 0).
    - InfoVAE: Zhao et al. maximise E log p(x|z) - (1 - alpha) KL(q(z|x) || p(z))
      - (alpha + lambda - 1) D(q(z) || p(z)); with D = MMD^2, that is model.beta = 1 - alpha and
      mmd_weight = alpha + lambda - 1 (alpha <= 1, alpha + lambda >= 1 here). Their MMD-VAE,
      alpha = 1, is again model.beta=0; alpha = 0, lambda = 1 is the plain VAE.

    kernel: "imq" or "rbf"; scales: the bandwidths s, each giving C = 2 D s for D latent
    dimensions (see `build_kernel`); mmd_weight: lambda. The papers' values do not carry over
    (WAE's MNIST lambda = 10 weighs 0.05 times a squared error, with a deterministic encoder):
    the Gaussian encoder here starts with q(z|x) close to p(z) for every x, where the MMD is
    already 0, and too heavy a weight keeps it there, z unused. On dynamically binarised
    Fashion-MNIST (model=conv, 2 epochs) lambda = 1000 did (KL 0.006 nats after 200 steps);
    100, the default, and 10 did not.

    Networks: one latent layer (mlp, conv), whose elbo_terms give z; a hierarchy gives no
    single z (refused at the first batch). A batch of one has no pair of posterior samples to
    compare: its penalty is 0 and "mmd" is not logged for it.
    Logged: "mmd", the batch's estimate of MMD^2 (unweighted).
    """

    def __init__(
        self,
        kernel: str = "imq",
        scales: Sequence[float] = WAE_SCALES,
        mmd_weight: float = 100.0,
    ):
        super().__init__()
        if kernel not in KERNELS:
            raise ConfigError("model.objective.kernel", kernel, f"one of {', '.join(KERNELS)}")
        if not (
            isinstance(scales, Sequence)
            and not isinstance(scales, str)
            and len(scales) > 0
            and all(_is_number(s) and s > 0 for s in scales)
        ):
            raise ConfigError(
                "model.objective.scales", scales, "a list of bandwidths > 0, e.g. [0.5, 1, 2]"
            )
        if not (_is_number(mmd_weight) and mmd_weight >= 0):
            raise ConfigError("model.objective.mmd_weight", mmd_weight, "a number >= 0, e.g. 100")
        self.mmd_weight = mmd_weight
        self.kernel = build_kernel(kernel, tuple(scales))

    def forward(self, model: Any, x: torch.Tensor, state: TrainingState) -> ObjectiveOutput:
        terms = model.elbo_terms(x)
        if terms.z is None:
            raise ValueError("the MMD objective needs one latent layer's z; a hierarchy has none")
        loss = terms.loss(state.kl_weight, state.free_bits)
        if len(terms.z) < 2:
            return ObjectiveOutput(loss, terms)
        prior_z = model.prior.sample(len(terms.z)).to(terms.z.dtype)
        mmd = mmd_unbiased(terms.z, prior_z, self.kernel)
        return ObjectiveOutput(loss + self.mmd_weight * mmd, terms, {"mmd": mmd.detach()})
