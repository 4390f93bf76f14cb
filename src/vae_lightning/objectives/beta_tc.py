"""beta-TCVAE (Chen et al. 2018, "Isolating Sources of Disentanglement in Variational
Autoencoders"): the KL term of the ELBO, averaged over the data, splits into

    E_p(x) KL(q(z|x) || p(z)) = I_q(x; z) + KL(q(z) || prod_d q(z_d)) + sum_d KL(q(z_d) || p(z_d))
                               = index-code MI + total correlation (TC) + dimension-wise KL,

and beta-TCVAE weights the three separately; a heavy weight on the TC alone pushes the aggregate
posterior q(z) = E_p(x) q(z|x) to factorise without also starving z of information about x.

q(z) and its marginals q(z_d) are mixtures over the whole data set; they are estimated on the
minibatch (see `log_aggregate_weights`), which needs the number of training images N
(TrainingState.dataset_size). The prior here is N(0, I).
"""

import math
from typing import Any

import torch

from vae_lightning.checks import non_negative, require
from vae_lightning.elbo import diagonal_gaussian_log_prob
from vae_lightning.objectives.base import Objective, ObjectiveOutput, TrainingState

# How q(z) is estimated from a minibatch: minibatch weighted or stratified sampling.
SAMPLING = ("mws", "mss")


def log_aggregate_weights(
    batch_size: int, dataset_size: int, sampling: str, dtype=torch.float32, device=None
) -> torch.Tensor:
    """log w_ij (M, M) such that q(z_i) ~= sum_j w_ij q(z_i | x_j) on a batch of M images drawn
    from a data set of N, where z_i was sampled from q(z|x_i).

    "mws", minibatch-weighted sampling as Chen et al. 2018 define it: w_ij = 1/(NM)
    for all j. It is biased low: its log q(z_i) falls short of the exact log (1/N) sum_n
    q(z_i|x_n) by b = log M + log(sum_n q(z_i|x_n) / sum_j q(z_i|x_j)) (n over the data set, j
    over the batch): at least log M, reached when the batch holds all the mass at z_i
    (posteriors far apart), log N when it holds its share M/N (posteriors alike), more only
    when it holds less by chance. The same holds for each marginal q(z_id), so of the logged
    terms MI is off by b_joint, dim-KL by -sum_d b_d and TC by sum_d b_d - b_joint: up to
    D log N - log M over D latent dims, when the joint posteriors are far apart and their
    marginals alike (not (D - 1) log N, the all-alike case). The gradients barely feel it (b is
    nearly constant), the logged numbers do.
    "mss", stratified: the term of the image z_i was drawn from is known exactly, the rest of
    the data set is estimated from the other M - 1 images: w_ii = 1/N, w_ij = (N-1)/(N(M-1)).
    The weights of each row sum to one, so q(z_i) is estimated without bias whichever regime the
    posteriors are in. (This is the stratification idea of Chen et al.'s appendix in its
    simplest unbiased form, not the weight matrix of their code.) A batch of one has no other
    image to stand for the rest of the data set, so the image's own posterior stands for all
    of it, w_11 = 1 (still a row summing to one): its MI and TC are 0, its dim-KL is its KL.

    With N = 1 (the default TrainingState's: pass the real N in evaluation too) "mws" becomes
    the batch's own mixture (1/M) sum_j q(z_i|x_j), as if the batch were the whole data set,
    and "mss" the image's own posterior alone (then MI = TC = 0).
    """
    if sampling not in SAMPLING:
        raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
    if dataset_size < 1:
        raise ValueError(f"dataset_size must be at least 1, got {dataset_size}")
    m, n = batch_size, dataset_size
    if sampling == "mws":
        return torch.full((m, m), -math.log(n * m), dtype=dtype, device=device)
    if m == 1:
        return torch.zeros((1, 1), dtype=dtype, device=device)
    other = math.log(n - 1) - math.log(n * (m - 1)) if n > 1 else -math.inf
    weights = torch.full((m, m), other, dtype=dtype, device=device)
    return weights.fill_diagonal_(-math.log(n))


def decompose_kl(
    z: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    dataset_size: int,
    sampling: str = "mws",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample estimates (M,) of the index-code MI, the TC and the dimension-wise KL from a
    batch: z (M, D) drawn from q(z|x_i) = N(mu_i, diag(exp(logvar_i))), prior N(0, I).

        mi     = log q(z_i|x_i) - log q(z_i)
        tc     = log q(z_i) - sum_d log q(z_id)
        dim_kl = sum_d log q(z_id) - log p(z_i)

    with log q(z_i) and log q(z_id) from `log_aggregate_weights`. They add up, exactly, to the
    single-sample KL estimate log q(z_i|x_i) - log p(z_i); their batch means estimate the three
    terms of the decomposition.
    """
    # log q(z_id | x_j) for every pair (i, j) and dim d: the trailing singleton dim is "summed"
    per_dim = diagonal_gaussian_log_prob(
        z[:, None, :, None], mu[None, :, :, None], logvar[None, :, :, None]
    )  # (M, M, D)
    log_w = log_aggregate_weights(len(z), dataset_size, sampling, z.dtype, z.device)
    log_qz = torch.logsumexp(per_dim.sum(dim=-1) + log_w, dim=1)
    log_prod_marginals = torch.logsumexp(per_dim + log_w[..., None], dim=1).sum(dim=-1)
    log_qz_x = diagonal_gaussian_log_prob(z, mu, logvar)
    log_pz = diagonal_gaussian_log_prob(z)
    return log_qz_x - log_qz, log_qz - log_prod_marginals, log_prod_marginals - log_pz


def _non_negative(**values: float) -> None:
    for name, value in values.items():
        require(non_negative(value), f"model.objective.{name}", value, "a number >= 0, e.g. 1")


class BetaTC(Objective):
    """loss = recon + alpha * MI + beta * TC + gamma * dim-KL, batch means. Chen et al. 2018 keep
    alpha = gamma = 1 and tune beta alone; beta = 6 is a common dSprites setting (their sweeps
    and disentangling-vae's default), not a value the paper prescribes.

    alpha = beta = gamma = 1 gives the single-sample ELBO with a Monte Carlo KL. The KL weight
    and free bits of the TrainingState are not used: alpha, beta and gamma take their place.
    Logged: "mi", "tc", "dim_kl" (batch means, in nats).
    """

    needs_dataset_size = True

    def __init__(
        self, alpha: float = 1.0, beta: float = 6.0, gamma: float = 1.0, sampling: str = "mws"
    ):
        super().__init__()
        _non_negative(alpha=alpha, beta=beta, gamma=gamma)
        allowed = f"one of {', '.join(SAMPLING)}"
        require(sampling in SAMPLING, "model.objective.sampling", sampling, allowed)
        self.alpha, self.beta, self.gamma, self.sampling = alpha, beta, gamma, sampling

    def forward(self, model: Any, x: torch.Tensor, state: TrainingState) -> ObjectiveOutput:
        terms = model.elbo_terms(x)
        mi, tc, dim_kl = decompose_kl(
            terms.z, terms.mu, terms.logvar, state.dataset_size, self.sampling
        )
        mi, tc, dim_kl = mi.mean(), tc.mean(), dim_kl.mean()
        loss = terms.recon.mean() + self.alpha * mi + self.beta * tc + self.gamma * dim_kl
        logged = {"mi": mi.detach(), "tc": tc.detach(), "dim_kl": dim_kl.detach()}
        return ObjectiveOutput(loss, terms, logged)
