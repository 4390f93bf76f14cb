"""End-to-end: the collapse remedies in real training runs, and eval.py on a trained checkpoint."""

import json
import math

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import ROOT, TINY, run_script
from tests.test_train import read_tensorboard
from vae_lightning.cli import evaluate, train
from vae_lightning.config import ConfigError
from vae_lightning.module import VAE

pytestmark = pytest.mark.slow

EVAL_KEYS = ("test/iwae_nll", "test/iwae_bpd", "test/active_units", "test/mig", "test/kl_per_dim")


def scalars(events, tag: str) -> dict[int, float]:
    return {event.step: event.value for event in events.Scalars(tag)}


def test_kl_warmup_in_steps_ramps_beta_linearly(tmp_path, tiny_config):
    train(
        tiny_config(
            "model.kl_warmup=4",
            "model.beta=2",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=6",
            "+trainer.limit_val_batches=1",
        )
    )
    beta = scalars(read_tensorboard(tmp_path / "tensorboard"), "train/beta")
    assert beta == pytest.approx({step: 2 * min(1, step / 4) for step in range(6)})


def test_free_bits_epoch_warmup_and_learned_sigma_in_training(tmp_path, tiny_config):
    free_bits, latent_dim = 1.0, 4
    metrics = train(
        tiny_config(
            "model.likelihood=gaussian_learned",
            "model.gaussian_sigma_per=channel",
            "model.kl_warmup=2",
            "model.kl_warmup_unit=epochs",
            f"model.free_bits={free_bits}",
        )
    )
    events = read_tensorboard(tmp_path / "tensorboard")
    beta, loss, recon, kl, elbo = (
        scalars(events, f"train/{name}") for name in ("beta", "loss", "recon", "kl", "elbo")
    )
    # 16 batches per epoch, warm-up over 2 epochs: beta = step / 32.
    assert beta == pytest.approx({step: step / 32 for step in range(32)})
    floored = 0
    for step in loss:
        kl_term = loss[step] - recon[step]  # beta * sum_d max(free_bits, batch-mean KL_d)
        assert kl_term >= beta[step] * max(kl[step], latent_dim * free_bits) - 1e-3
        floored += kl_term > beta[step] * kl[step] + 1e-3
        assert elbo[step] == pytest.approx(-(recon[step] + kl[step]), abs=1e-3)  # no floor
    assert floored > 0
    # validation: the full beta (1), no free bits
    val = {name: scalars(events, f"val/{name}") for name in ("loss", "recon", "kl")}
    for step, value in val["loss"].items():
        assert value == pytest.approx(val["recon"][step] + val["kl"][step], rel=1e-5)

    sigma = scalars(events, "train/gaussian_sigma")
    assert sigma[0] == pytest.approx(0.1, rel=1e-5) and abs(sigma[max(sigma)] - 0.1) > 1e-3
    model = VAE.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert model.likelihood.sigma.shape == (1, 1, 1)  # one channel
    assert model.likelihood.sigma.item() == pytest.approx(sigma[max(sigma)], abs=5e-4)
    assert math.isfinite(metrics["test/iwae_nll"])


def test_eval_script_rebuilds_the_run_and_writes_the_metrics(tmp_path):
    run_dir, eval_dir = tmp_path / "run", tmp_path / "eval"
    result = run_script("train.py", *TINY, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert trained["test/iwae_k"] == 100  # the end-of-training default

    result = run_script(
        "eval.py",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        "eval.iwae_k=50",
        f"hydra.run.dir={eval_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/iwae_nll" in result.stdout  # the table
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    for metrics in (trained, evaluated):
        assert set(EVAL_KEYS) <= set(metrics)
        # IWAE_k >= ELBO up to Monte Carlo noise; both in nats per image
        assert metrics["test/iwae_nll"] < -metrics["test/elbo"] + 1.0
        assert metrics["test/iwae_bpd"] == pytest.approx(
            metrics["test/iwae_nll"] / (32 * 32 * math.log(2))
        )
        assert len(metrics["test/kl_per_dim"]) == 4
        assert sum(metrics["test/kl_per_dim"]) == pytest.approx(metrics["test/kl"], abs=1e-3)
        assert 0 <= metrics["test/active_units"] <= 4 and 0 <= metrics["test/mig"] <= 1
    # Same checkpoint, same test split (data config read back from the run): the closed-form
    # KL and the posterior means agree exactly; the sampled terms within noise.
    assert evaluated["test/kl"] == pytest.approx(trained["test/kl"], rel=1e-5)
    assert evaluated["test/kl_per_dim"] == trained["test/kl_per_dim"]
    assert evaluated["test/active_units"] == trained["test/active_units"]
    assert evaluated["test/mig"] == pytest.approx(trained["test/mig"])
    assert evaluated["test/iwae_nll"] == pytest.approx(trained["test/iwae_nll"], rel=0.02)
    assert evaluated["test/iwae_k"] == 50

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        missing = compose("eval", overrides=[f"ckpt_path={tmp_path / 'nothing.ckpt'}"])
        other_size = compose(
            "eval",
            overrides=[
                f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                "data=shapes",
                "data.size=100",
                "data.image_size=16",
            ],
        )
    with pytest.raises(ConfigError, match="ckpt_path=.*nothing.ckpt"):
        evaluate(missing)
    with pytest.raises(ConfigError, match=r"model's shape \(1, 32, 32\)"):
        evaluate(other_size)
