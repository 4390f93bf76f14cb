"""The importance-weighted bound (IWAE) as the training loss, with the standard or the doubly
reparameterised (DReG) gradient estimator."""

import math
from typing import Any

import torch

from vae_lightning.checks import positive_int, require
from vae_lightning.objectives.base import Objective, ObjectiveOutput, TrainingState

# The IWAE gradient estimators: the standard one, or the doubly reparameterised (DReG).
ESTIMATORS = ("standard", "dreg")


class IWAE(Objective):
    """loss = -IWAE_k, the batch mean of the k-sample importance-weighted bound (Burda, Grosse &
    Salakhutdinov 2016, "Importance weighted autoencoders"):

        IWAE_k(x) = log (1/k) sum_i w_i,   w_i = p(x, z_i) / q(z_i|x),   z_i ~ q(z|x),

    a lower bound on log p(x) that rises with k towards it; IWAE_1 is the ELBO. The bound has no
    separate KL term, so for k > 1 the KL weight (beta, warm-up) and free bits do not apply.

    k = 1 with the standard estimator is the ELBO objective itself (model.elbo_terms and
    ELBOTerms.loss, KL weight and free bits included): the same bound, with the closed-form KL
    where the prior has one, which has lower variance than the log w path.

    Gradients, with the normalised weights w~_i = w_i / sum_j w_j (treated as constants):

    - "standard": the gradient of the bound itself, sum_i w~_i grad log w_i, for the decoder and
      prior (theta) and the encoder (phi) alike. Its signal-to-noise ratio for phi falls like
      1/sqrt(k) (Rainforth et al. 2018, "Tighter variational bounds are not necessarily
      better").
    - "dreg" (Tucker, Lawson, Gu & Maddison 2019, "Doubly reparameterized gradient estimators
      for Monte Carlo objectives"): theta keeps the standard gradient; phi gets

          sum_i w~_i^2 (d log w_i / d z_i) (d z_i / d phi),

      with q's parameters held fixed inside log q(z_i|x) (the model's stop_posterior_grad), an
      unbiased estimate of the same gradient whose signal-to-noise ratio does not decay with k.
      It is the gradient of the surrogate -(w~ * log w).sum(0).mean(), with a hook on z that
      multiplies the gradient reaching z_i by w~_i once more; the loss is the bound's value plus
      (surrogate - surrogate.detach()), so its value is -IWAE_k and its gradient DReG's. The
      prior's own parameters (the VampPrior's pseudo-inputs, and the encoder through them) act
      on log p(z_i) only, not through z_i, so they get the theta-type gradient, which is the
      correct one for them. With k = 1, w~ = 1 and DReG is the path derivative ("sticking the
      landing", Roeder, Wu & Duvenaud 2017).

    Logged: "iwae_bound", the batch mean of IWAE_k (for k > 1, or the DReG estimator).
    """

    def __init__(self, k: int = 5, estimator: str = "standard"):
        super().__init__()
        require(positive_int(k), "model.objective.k", k, "a positive integer of samples, e.g. 5")
        allowed = f"one of {', '.join(ESTIMATORS)}"
        require(estimator in ESTIMATORS, "model.objective.estimator", estimator, allowed)
        self.k = k
        self.estimator = estimator

    def forward(self, model: Any, x: torch.Tensor, state: TrainingState) -> ObjectiveOutput:
        if self.k == 1 and self.estimator == "standard":
            terms = model.elbo_terms(x)
            return ObjectiveOutput(terms.loss(state.kl_weight, state.free_bits), terms)
        dreg = self.estimator == "dreg"
        log_w, z = model.log_importance_weights(x, self.k, stop_posterior_grad=dreg)
        bound = torch.logsumexp(log_w, dim=0) - math.log(self.k)  # (batch,)
        loss = -bound.mean()
        logged = {"iwae_bound": bound.mean().detach()}
        if dreg and torch.is_grad_enabled() and log_w.requires_grad:
            weights = torch.softmax(log_w.detach(), dim=0)  # w~, (k, batch)
            if z.requires_grad:
                # The path into phi already carries one w~_i from the surrogate: make it w~_i^2.
                z.register_hook(lambda grad: grad * weights[..., None])
            surrogate = -(weights * log_w).sum(dim=0).mean()
            loss = loss.detach() + (surrogate - surrogate.detach())
        return ObjectiveOutput(loss, logged=logged)
