"""Controlled capacity increase (Burgess et al. 2018, "Understanding disentangling in
beta-VAE"): instead of a fixed weight on the KL, pin the KL to a target capacity C in nats,

    loss = recon + gamma * |KL - C|,

and raise C linearly from c_min to c_max over n_steps optimiser steps, then hold it. The code
first encodes the factors that buy the most reconstruction per nat and takes on the others as
C grows. Defaults are the paper's dSprites settings: gamma = 1000, C from 0 to 25 nats over
100,000 iterations (disentanglement_lib's AnnealedVAE uses the same gamma and n_steps).
"""

from typing import Any

import torch

from vae_lightning.checks import is_int, is_number, non_negative, require
from vae_lightning.objectives.base import Objective, ObjectiveOutput, TrainingState


def capacity_at(step: int, c_max: float, n_steps: int, c_min: float = 0.0) -> float:
    """C after `step` optimiser steps: c_min at 0, linear up to c_max at n_steps, then c_max."""
    if n_steps <= 0:
        return c_max
    return c_min + (c_max - c_min) * min(max(step, 0) / n_steps, 1.0)


class Capacity(Objective):
    """loss = batch mean of recon + gamma * |batch mean of KL - C(state.step)|.

    The |.| is taken on the batch-mean KL, as in the paper's objective and disentanglement_lib
    (not per image). The KL weight and free bits of the TrainingState are not used. Validation
    sees C at the TrainingState's step. Logged: "capacity" (C in nats).
    """

    def __init__(
        self,
        gamma: float = 1000.0,
        c_max: float = 25.0,
        n_steps: int = 100_000,
        c_min: float = 0.0,
    ):
        super().__init__()
        for name, value in (("gamma", gamma), ("c_min", c_min)):
            require(non_negative(value), f"model.objective.{name}", value, "a number >= 0")
        require(
            is_int(n_steps) and n_steps >= 0, "model.objective.n_steps", n_steps, "an integer >= 0"
        )
        at_least = f"a number >= model.objective.c_min={c_min}"
        require(is_number(c_max) and c_max >= c_min, "model.objective.c_max", c_max, at_least)
        self.gamma, self.c_max, self.n_steps, self.c_min = gamma, c_max, int(n_steps), c_min

    def capacity(self, step: int) -> float:
        return capacity_at(step, self.c_max, self.n_steps, self.c_min)

    def forward(self, model: Any, x: torch.Tensor, state: TrainingState) -> ObjectiveOutput:
        terms = model.elbo_terms(x)
        capacity = self.capacity(state.step)
        loss = terms.recon.mean() + self.gamma * (terms.kl.mean() - capacity).abs()
        logged = {"capacity": torch.tensor(capacity, dtype=loss.dtype, device=loss.device)}
        return ObjectiveOutput(loss, terms, logged)
