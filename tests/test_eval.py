"""End-to-end: the collapse remedies in real training runs, and eval.py on a trained checkpoint."""

import json
import math
import os
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tests.helpers import ROOT, TINY, run_script
from vae_lightning import progress
from vae_lightning.cli import evaluate, train
from vae_lightning.errors import ConfigError

pytestmark = pytest.mark.slow

EVAL_KEYS = ("test/iwae_nll", "test/iwae_bpd", "test/active_units", "test/mig", "test/kl_per_dim")


def test_eval_script_rebuilds_the_run_and_writes_the_metrics(tmp_path):
    run_dir, eval_dir = tmp_path / "run", tmp_path / "eval"
    result = run_script("train.py", *TINY, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert trained["test/iwae_k"] == 100  # the end-of-training default
    # 64 test images, fewer than its default eval.iwae_images=400
    forecast = "IWAE bound (k=100): 64 test images x 100 draws = 6,400 decoded images, about "
    assert forecast in (run_dir / "train.log").read_text()

    # the path metrics.json gives can be pasted into the command line as it is
    best = trained["best_checkpoint"]
    assert Path(best).is_file() and Path(best).parent == run_dir / "checkpoints"
    result = run_script(
        "eval.py", f"ckpt_path={best}", "eval.iwae_k=50", f"hydra.run.dir={eval_dir}"
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
                f"paths.root_dir={ROOT}",  # composed outside a Hydra run: no ${hydra:runtime.cwd}
                "data=shapes",
                "data.size=100",
                "data.image_size=16",
            ],
        )
    with pytest.raises(ConfigError, match="ckpt_path=.*nothing.ckpt"):
        evaluate(missing)
    with pytest.raises(ConfigError, match=r"model's shape \(1, 32, 32\)"):
        evaluate(other_size)


def test_eval_py_says_what_the_iwae_bound_costs_before_it_runs(tmp_path, tiny_config):
    trained = train(tiny_config("trainer.max_epochs=1", "eval.iwae_k=2"))
    # the 64 test images in batches of 16: eval.limit_test_batches bounds the images, then
    # eval.iwae_images does
    for limit_test_batches, images in ((2, 32), (3, 40)):
        eval_dir = tmp_path / f"eval_{limit_test_batches}"
        result = run_script(
            "eval.py",
            f"ckpt_path={trained['best_checkpoint']}",
            # the training run's own data (a run of train() has no saved .hydra config)
            "data=shapes",
            "data.size=640",
            "data.eval_batch_size=16",
            f"eval.limit_test_batches={limit_test_batches}",
            "eval.iwae_images=40",
            "eval.iwae_k=3",
            f"paths.root_dir={ROOT}",
            f"hydra.run.dir={eval_dir}",
            env={**os.environ, progress.AFTER_VARIABLE: "0"},  # progress lines, however short
        )
        assert result.returncode == 0, result.stderr[-3000:]
        forecast = re.compile(
            rf"IWAE bound \(k=3\): {images} test images x 3 draws = {3 * images} decoded images, "
            r"about [\d.]+s on this machine \(timed on the first 48\); "  # one batch's 3 draws
            r"eval\.iwae_images=N and eval\.iwae_k=K make it shorter$"
        )
        assert any(forecast.search(line) for line in result.stdout.splitlines())
        log_lines = (eval_dir / "eval.log").read_text().splitlines()
        first, *steps, end = [line for line in log_lines if " - IWAE bound (k=3): " in line]
        assert forecast.search(first)  # before the progress lines and the end line
        assert steps and not any(forecast.search(line) for line in steps)
        assert re.search(rf"IWAE bound \(k=3\): {images} images in [\d.]+s", end)
        metrics = json.loads((eval_dir / "metrics.json").read_text())
        assert metrics["test/iwae_images"] == images


def test_disentanglement_metrics_after_training_and_in_eval_py_agree(tmp_path, tiny_config):
    metrics = (
        "eval.disentanglement.metrics=[beta_vae,factor_vae,mig,sap,dci]",
        "eval.disentanglement.n_train=60",
        "eval.disentanglement.n_eval=30",
        "eval.disentanglement.batch_size=8",
    )
    trained = train(tiny_config("trainer.max_epochs=1", "eval.iwae_k=5", *metrics))
    names = ("beta_vae", "factor_vae", "mig", "sap")
    names += ("dci_disentanglement", "dci_completeness", "dci_informativeness")
    assert all(0 <= trained[f"test/{name}"] <= 1 for name in names)
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        eval_cfg = compose(
            "eval",
            overrides=[
                f"ckpt_path={trained['best_checkpoint']}",
                f"paths.output_dir={tmp_path / 'eval'}",
                f"paths.root_dir={ROOT}",
                "eval.iwae_k=5",
                *metrics,
                # the training run's own data (a run of train() has no saved .hydra config)
                "data=shapes",
                "data.size=640",
                "data.eval_batch_size=64",
            ],
        )
    evaluated = evaluate(eval_cfg)
    for name in names:  # fixed seeds and sample sizes: the same numbers
        assert evaluated[f"test/{name}"] == pytest.approx(trained[f"test/{name}"], abs=1e-6)
