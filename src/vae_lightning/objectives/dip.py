"""DIP-VAE (Kumar et al. 2018, "Variational Inference of Disentangled Latent Concepts from
Unlabeled Observations"): the ELBO plus a penalty that moves a covariance of the aggregate
posterior q(z) = E_p(x) q(z|x) towards the identity, the covariance of the prior N(0, I), so
that its dims decorrelate ("disentangled inferred prior").

    DIP-VAE-I:  C = Cov_p(x)[mu(x)]                             (the posterior means only)
    DIP-VAE-II: C = Cov_q(z)[z] = Cov_p(x)[mu(x)] + E_p(x)[diag(sigma^2(x))]

    penalty = lambda_od sum_{i != j} C_ij^2 + lambda_d sum_i (C_ii - 1)^2

Both are estimated on the minibatch. Cov[mu] uses the unbiased (M - 1) normaliser, so that the
DIP-II matrix is exactly the expectation of the unbiased sample covariance of z ~ q(z|x) over
the batch (disentanglement_lib divides by M instead). A batch of one shows no spread of mu: its
Cov[mu] is 0 (disentanglement_lib's value too), so DIP-I's penalty is the constant lambda_d * D,
with no gradient, and DIP-II's C is diag(sigma^2) of the one image.
"""

from typing import Any

import torch

from vae_lightning.checks import non_negative, require
from vae_lightning.objectives.base import Objective, ObjectiveOutput, TrainingState

VARIANTS = ("i", "ii")  # DIP-VAE-I or -II

# Kumar et al.: lambda_d = 10 lambda_od for DIP-VAE-I, lambda_d = lambda_od for DIP-VAE-II.
LAMBDA_D_FACTOR = {"i": 10.0, "ii": 1.0}


def dip_covariance(mu: torch.Tensor, logvar: torch.Tensor, variant: str = "ii") -> torch.Tensor:
    """The (D, D) covariance DIP-VAE regularises, from a batch of posteriors mu, logvar (M, D)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    centred = mu - mu.mean(dim=0)
    cov = centred.T @ centred / max(len(mu) - 1, 1)
    if variant == "ii":
        cov = cov + torch.diag(logvar.exp().mean(dim=0))
    return cov


def dip_penalty(cov: torch.Tensor, lambda_od: float, lambda_d: float) -> torch.Tensor:
    """lambda_od * (sum of squared off-diagonal entries) + lambda_d * sum_i (C_ii - 1)^2: zero
    exactly for the identity."""
    diagonal = cov.diagonal()
    off_diagonal = cov - torch.diag(diagonal)
    return lambda_od * off_diagonal.pow(2).sum() + lambda_d * (diagonal - 1).pow(2).sum()


class DIPVAE(Objective):
    """loss = recon + kl_weight * KL (ELBOTerms.loss: warm-up and free bits apply) + penalty.

    lambda_d=None takes the paper's rule: 10 * lambda_od for "i", lambda_od for "ii".
    lambda_od = 10 is within the paper's range and disentanglement_lib's sweep (1 to 50).
    Logged: "dip_penalty".
    """

    def __init__(self, variant: str = "ii", lambda_od: float = 10.0, lambda_d: float | None = None):
        super().__init__()
        require(variant in VARIANTS, "model.objective.variant", variant, "one of i, ii")
        require(non_negative(lambda_od), "model.objective.lambda_od", lambda_od, "a number >= 0")
        if lambda_d is None:
            lambda_d = LAMBDA_D_FACTOR[variant] * lambda_od
        require(non_negative(lambda_d), "model.objective.lambda_d", lambda_d, "a number >= 0")
        self.variant, self.lambda_od, self.lambda_d = variant, lambda_od, lambda_d

    def forward(self, model: Any, x: torch.Tensor, state: TrainingState) -> ObjectiveOutput:
        terms = model.elbo_terms(x)
        cov = dip_covariance(terms.mu, terms.logvar, self.variant)
        penalty = dip_penalty(cov, self.lambda_od, self.lambda_d)
        loss = terms.loss(state.kl_weight, state.free_bits) + penalty
        return ObjectiveOutput(loss, terms, {"dip_penalty": penalty.detach()})
