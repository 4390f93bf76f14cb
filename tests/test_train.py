"""End-to-end runs of the training function and of train.py, on tiny settings."""

import json
import math
import re
import time

import pytest
import torch
from hydra.utils import instantiate

from tests.helpers import TINY, make_config, read_tensorboard, run_script
from vae_lightning.cli import train
from vae_lightning.module import VAE
from vae_lightning.profilers import NoProfiler

pytestmark = pytest.mark.slow


def test_train_writes_checkpoints_metrics_images_and_curves(tmp_path, tiny_config):
    metrics = train(tiny_config("trainer.max_epochs=3"))

    checkpoints = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints and any(n.startswith("epoch_") for n in checkpoints)
    assert metrics["best_checkpoint"].startswith(str(tmp_path / "checkpoints"))

    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == metrics
    for key in ("test/loss", "test/recon", "test/kl", "test/elbo", "best_val/loss"):
        assert math.isfinite(saved[key])
    assert saved["test/elbo"] == pytest.approx(-(saved["test/recon"] + saved["test/kl"]), rel=1e-5)
    assert saved["epochs"] == 3 and saved["steps"] == 3 * 16  # 512 training images / 32

    events = read_tensorboard(tmp_path / "tensorboard")
    scalars = set(events.Tags()["scalars"])
    for stage in ("train", "val"):
        assert {f"{stage}/{term}" for term in ("loss", "recon", "kl", "elbo")} <= scalars
    assert {"test/elbo", "test/loss"} <= scalars
    assert {"images/reconstructions", "images/samples"} <= set(events.Tags()["images"])

    losses = [event.value for event in events.Scalars("train/loss")]
    assert len(losses) == 48
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5  # training loss fell

    pngs = {p.name for p in (tmp_path / "images").iterdir()}  # test_visualisation checks all
    assert pngs >= {
        f"{kind}_epoch_{e:03d}.png" for kind in ("reconstructions", "samples") for e in range(3)
    }


@pytest.mark.parametrize("logger", ["csv", "wandb"])
def test_other_loggers(tmp_path, tiny_config, logger, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    metrics = train(tiny_config(f"logger={logger}", "trainer.max_epochs=1"))
    assert math.isfinite(metrics["test/elbo"])
    if logger == "csv":
        header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
        assert {"train/loss", "val/elbo", "test/elbo"} <= set(header)
    else:
        runs = list((tmp_path / "wandb").glob("offline-run-*"))
        assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))


def test_multirun_makes_one_directory_per_job(tmp_path):
    result = run_script(
        "train.py",
        "-m",
        *TINY,
        "trainer.max_epochs=1",
        "model.beta=0.5,1",
        "model.latent_dim=2,4",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and p.name != ".hydra")
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    seen = set()
    for job in jobs:
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        seen.add(
            tuple(line for line in overrides.splitlines() if "beta" in line or "latent" in line)
        )
        assert math.isfinite(json.loads((job / "metrics.json").read_text())["test/elbo"])
    assert len(seen) == 4


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.latent_dim=0", "model.latent_dim"),
        ("model.latent_dim=-3", "model.latent_dim"),
        ("model.latent_dim=abc", "model.latent_dim"),
        ("model.beta=-1", "model.beta"),
        ("model.likelihood=poisson", "model.likelihood"),
        ("model.objective=foo", "model.objective"),
        ("model.objective=iwae model.objective.k=0", "model.objective.k"),
        ("model.objective=iwae model.objective.estimator=foo", "model.objective.estimator"),
        ("model.prior=foo", "model.prior"),
        ("model.prior=vamp model.prior.n_pseudo_inputs=0", "model.prior.n_pseudo_inputs"),
        ("model.prior=vamp model.free_bits=0.5", "model.free_bits"),
        ("optimized_metric=loss", "optimized_metric"),
        ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches"),
        ("eval.samples.n=3", "eval.samples.n"),
    ],
)
def test_bad_config_gives_one_clear_line_and_nonzero_exit(tmp_path, override, key):
    result = run_script("train.py", *override.split(), f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {key}=") and "allowed" in lines[0]
    assert not (tmp_path / "checkpoints").exists()


def test_the_evaluation_after_training_honours_limit_test_batches(tiny_config, tmp_path):
    # 64 test images in batches of 16: with limit_test_batches=1 the evaluation sees only the
    # first batch; eval.iwae_images=20 bounds the IWAE NLL alone, across a batch boundary
    settings = ("trainer.max_epochs=1", "data.eval_batch_size=16", "eval.iwae_images=20")
    full = train(tiny_config(*settings))
    per_image = torch.load(tmp_path / "iwae_nll_per_image.pt")
    limited = train(tiny_config(*settings, "+trainer.limit_test_batches=1"))
    assert (full["test/images"], limited["test/images"]) == (64, 16)
    assert (full["test/iwae_images"], limited["test/iwae_images"]) == (20, 16)
    assert per_image.shape == (20,)
    assert full["test/iwae_nll"] == pytest.approx(per_image.mean().item(), rel=1e-6)


def test_training_on_every_image_without_a_validation_split(tiny_config):
    metrics = train(tiny_config("data.val_fraction=0", "trainer.max_epochs=1"))
    assert metrics["steps"] == 18  # 576 training images (640 less 64 for test) / 32
    assert math.isfinite(metrics["test/elbo"]) and not any(k.startswith("val/") for k in metrics)


def test_importing_the_package_leaves_warning_filters_alone():
    # the dependencies may set their own filters; our modules must add none
    script = (
        "import warnings, lightning.pytorch, torchvision, hydra, matplotlib.figure, tensorboard; "
        "before = list(warnings.filters); "
        "import vae_lightning.cli, vae_lightning.module, vae_lightning.callbacks; "
        "assert warnings.filters == before, 'a warning filter was added'"
    )
    result = run_script("-c", script)
    assert result.returncode == 0, result.stderr


def test_compile_channels_last_and_bf16_train_and_load_as_a_plain_model(tiny_config):
    metrics = train(
        tiny_config(
            "model.compile=true",
            "model.channels_last=true",
            "trainer.precision=bf16-mixed",
            "trainer.max_epochs=1",
        )
    )
    assert math.isfinite(metrics["test/elbo"]) and metrics["test/elbo"] < 0
    # compile works in place: the checkpoint's keys are those of the plain modules
    saved = torch.load(metrics["best_checkpoint"], weights_only=True)
    plain = VAE(**{**saved["hyper_parameters"], "compile": False, "channels_last": False})
    assert saved["state_dict"].keys() == plain.state_dict().keys()
    plain.load_state_dict(saved["state_dict"])


def test_the_trainer_profiles_nothing_by_default_and_a_real_profiler_on_request(tmp_path):
    assert isinstance(instantiate(make_config(tmp_path).trainer).profiler, NoProfiler)
    profiler = (
        "trainer.profiler._target_=lightning.pytorch.profilers.SimpleProfiler",
        f"+trainer.profiler.dirpath={tmp_path}",
        "+trainer.profiler.filename=profile",
    )
    train(make_config(tmp_path, *profiler, "trainer.max_epochs=1"))
    report = (tmp_path / "fit-profile.txt").read_text()
    cells = [line.split("|") for line in report.splitlines()]
    rows = {row[1].strip(): row[3].strip() for row in cells if len(row) > 4}  # action: calls
    # one training epoch of 512 images in batches of 32: every step and its hooks were timed
    assert rows["run_training_batch"] == "16"
    assert rows["[Strategy]SingleDeviceStrategy.training_step"] == "16"


@pytest.mark.gpu
def test_speed_options_train_on_a_gpu(tiny_config):
    metrics = train(
        tiny_config(
            "trainer=gpu",
            "model.compile=true",
            "model.channels_last=true",
            "trainer.precision=bf16-mixed",
            "trainer.max_epochs=1",
        )
    )
    assert math.isfinite(metrics["test/elbo"]) and metrics["test/elbo"] < 0


def test_train_py_reports_where_its_time_went(tmp_path):
    started = time.perf_counter()
    result = run_script("train.py", *TINY, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path}")
    wall = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    phases = metrics["phases_s"]
    assert list(phases) == [
        "imports", "config", "data", "model", "epochs", "pictures", "test", "evaluation",
        "sample metrics",  # the shapes have no feature network: a line says so, in no time
    ]  # fmt: skip
    assert all(seconds >= 0 for seconds in phases.values())
    assert phases["epochs"] > 0 and phases["pictures"] > 0 and phases["evaluation"] > 0
    # the phases are parts of the process's life, none counted twice
    assert sum(phases.values()) <= wall
    assert (
        sum(phases.values()) - phases["imports"] - phases["config"] <= metrics["wall_time_s"] + 0.1
    )
    output = result.stdout + result.stderr
    (line,) = [line for line in output.splitlines() if "time: imports " in line]
    shown = float(re.search(r"evaluation (\d+\.\d) s", line).group(1))
    assert abs(shown - phases["evaluation"]) <= 0.06  # to 0.1 s on the console, 0.01 s in the file
