"""Every training objective and prior through the entry points: train.py trains a few steps and
writes metrics.json, eval.py and sample.py rebuild the model from its checkpoint alone."""

import json
import math

import pytest
import torch
from PIL import Image

from tests.helpers import TINY, run_script
from vae_lightning.module import VAE

pytestmark = pytest.mark.slow

CHOICES = {
    "iwae": ["model.objective=iwae", "model.objective.k=4"],
    "dreg": ["model.objective=iwae", "model.objective.k=4", "model.objective.estimator=dreg"],
    "vamp": ["model.prior=vamp", "model.prior.n_pseudo_inputs=6"],
    "iwae_vamp": ["model.objective=iwae", "model.objective.k=3", "model.prior=vamp",
                  "model.prior.n_pseudo_inputs=6"],
    "beta_tc": ["model.objective=beta_tc"],
    "factor": ["model.objective=factor", "model.objective.discriminator_hidden=16"],
    "dip": ["model.objective=dip"],
    "capacity": ["model.objective=capacity", "model.objective.n_steps=10"],
    "wae": ["model.objective=mmd", "model.beta=0"],
}  # fmt: skip
OBJECTIVES = {"iwae": "IWAE", "dreg": "IWAE", "iwae_vamp": "IWAE", "beta_tc": "BetaTC",
              "factor": "FactorVAE", "dip": "DIPVAE", "capacity": "Capacity",
              "wae": "MMD"}  # fmt: skip


@pytest.mark.parametrize("choice", sorted(CHOICES))
def test_objective_and_prior_train_evaluate_and_sample_from_the_checkpoint(tmp_path, choice):
    run_dir = tmp_path / "run"
    result = run_script(
        "train.py", *TINY, "trainer.max_epochs=1", "eval.iwae_k=20", *CHOICES[choice],
        f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    trained = json.loads((run_dir / "metrics.json").read_text())
    # the reported ELBO and NLL are of the model p(x, z) itself, whatever trained it
    assert math.isfinite(trained["test/elbo"]) and trained["test/elbo"] < 0
    assert trained["test/iwae_nll"] < -trained["test/elbo"] + 1.0

    model = VAE.load_from_checkpoint(trained["best_checkpoint"])
    assert type(model.objective).__name__ == OBJECTIVES.get(choice, "ELBO")
    prior = "VampPrior" if "vamp" in choice else "StandardPrior"
    assert type(model.prior).__name__ == prior
    if prior == "VampPrior":  # the learned pseudo-inputs are in the checkpoint
        saved = torch.load(trained["best_checkpoint"], weights_only=True)["state_dict"]
        assert saved["prior.pseudo_input_logits"].shape == (6, 1, 32, 32)

    eval_dir = tmp_path / "eval"
    result = run_script(
        "eval.py", f"ckpt_path={trained['best_checkpoint']}", "eval.iwae_k=20",
        f"hydra.run.dir={eval_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    assert evaluated["test/iwae_nll"] == pytest.approx(trained["test/iwae_nll"], rel=0.02)
    assert evaluated["test/active_units"] == trained["test/active_units"]

    result = run_script(
        "sample.py", f"ckpt_path={trained['best_checkpoint']}", "n=8", f"out={tmp_path}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert Image.open(tmp_path / "prior.png").size == (8 * 33 + 1, 33 + 1)
