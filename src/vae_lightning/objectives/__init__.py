"""Training objectives: each turns what the model computed for a batch into the training loss
and the extra values it logs. `model.objective` picks one (conf/model/objective/, one file here
each); the default, `elbo`, is the beta-weighted single-sample ELBO; `iwae` the
importance-weighted bound (standard or DReG gradient); `beta_tc`, `factor`, `dip` and
`capacity` the beta-VAE family; `mmd` WAE-MMD and InfoVAE.

An objective reads the model only through two methods, so that every model (the one-layer VAE,
the hierarchical one) trains with every objective that makes sense for it:

- `model.elbo_terms(x) -> ELBOTerms`: one posterior sample per image, with the per-sample terms
  recon = -log p(x|z), kl = KL(q(z|x) || p(z)) (closed form or Monte Carlo, as the prior allows),
  and the posterior's mu, logvar and the sample z;
- `model.log_importance_weights(x, k, stop_posterior_grad=False) -> (log_w, z)`: k draws
  z_i ~ q(z|x) per image (k, batch, latent_dim) and log w_i = log p(x, z_i) - log q(z_i|x)
  (k, batch); with stop_posterior_grad the parameters of q in log q(z_i|x) are detached (the
  path through z_i is kept), as the doubly-reparameterised gradient needs.

Validation and test call the objective with the module's TrainingState at the full KL weight
beta, no warm-up and no free bits (VAE.validation_step, test_step), so val/loss is comparable
across epochs; the step (a schedule's, e.g. capacity's) and the training-set size are those of
training.
"""

from vae_lightning.objectives.base import Objective, ObjectiveOutput, TrainingState
from vae_lightning.objectives.beta_tc import BetaTC
from vae_lightning.objectives.capacity import Capacity
from vae_lightning.objectives.dip import DIPVAE
from vae_lightning.objectives.elbo import ELBO
from vae_lightning.objectives.factor import FactorVAE
from vae_lightning.objectives.iwae import IWAE
from vae_lightning.objectives.mmd import MMD

__all__ = [
    "DIPVAE",
    "ELBO",
    "IWAE",
    "MMD",
    "BetaTC",
    "Capacity",
    "FactorVAE",
    "Objective",
    "ObjectiveOutput",
    "TrainingState",
]
