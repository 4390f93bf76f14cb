"""What a newcomer types first, through the real entry points: Lightning's Trainer arguments,
typos, a GPU that is not there, a folder that cannot be written, W&B without an account, and the
first screen of a run."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT, TINY, run_script

pytestmark = pytest.mark.slow


def one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_every_lightning_trainer_argument_is_accepted_as_trainer_x(tmp_path):
    # limit_train_batches and max_steps are not in conf/trainer/: Hydra alone refuses them
    result = run_script(
        "train.py",
        *TINY,
        "trainer.limit_train_batches=3",
        "trainer.max_steps=5",
        "trainer.max_epochs=3",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["steps"], metrics["epochs"]) == (5, 2)  # 3 + 2 batches, stopped by max_steps


@pytest.mark.parametrize("no_logger", ["logger=null", "~logger"])
def test_a_run_without_a_logger_with_lightning_trainer_arguments(tmp_path, no_logger):
    # Hydra takes no `group=null` (a traceback), and a `~group` used to leave trainer.X unchecked
    result = run_script(
        "train.py",
        *TINY,
        no_logger,
        "trainer.limit_train_batches=3",
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 3
    assert not (tmp_path / "tensorboard").exists()


@pytest.mark.parametrize(
    ("script", "override", "expected"),
    [
        (
            "train.py",
            "trainer.limt_train_batches=5",
            "error: trainer.limt_train_batches is not an argument of lightning.Trainer: did you "
            "mean trainer.limit_train_batches or ",
        ),
        (
            "train.py",
            "model.latnt_dim=16",
            "error: model.latnt_dim is not a key of model: did you mean model.latent_dim? its "
            "keys: network, posterior, prior, likelihood, objective, ",
        ),
        (
            "train.py",
            "data.channels=2",  # the shapes data is grey: it has no channels
            "error: data.channels is not a key of data: its keys: _target_, size, image_size, ",
        ),
        (
            "train.py",
            "model.objective.kk=2",
            "error: model.objective.kk is not a key of model.objective: its keys: _target_ ",
        ),
        ("train.py", "sed=1", "error: sed is not a top-level key: did you mean seed? "),
        ("eval.py", "eval.iwae=10", "error: eval.iwae is not a key of eval: did you mean eval."),
        ("sample.py", "steps_=3", "error: steps_ is not a top-level key: did you mean steps? "),
    ],
)
def test_a_misspelt_key_is_one_line_with_the_closest_keys(tmp_path, script, override, expected):
    result = run_script(script, override, f"hydra.run.dir={tmp_path}")
    assert one_line_error(result).startswith(expected)
    assert not (tmp_path / ".hydra").exists()


def test_keys_that_exist_only_in_a_chosen_group_option_are_known(tmp_path):
    result = run_script(
        "train.py",
        *TINY,
        "model.objective=iwae",
        "model.objective.k=2",
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("override", ["trainer.accelerator=gpu", "trainer=gpu"])
def test_a_gpu_accelerator_without_a_gpu_is_one_line(tmp_path, override):
    result = run_script(
        "train.py", *TINY, override, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path}"
    )
    if torch.cuda.is_available():  # on a GPU machine the same command trains
        assert result.returncode == 0, result.stderr[-3000:]
        return
    assert one_line_error(result) == (
        "error: trainer.accelerator='gpu' is not allowed: cpu or auto: this machine has no GPU "
        "(trainer=cpu)"
    )
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path, key):
    multirun = ["-m"] if key == "hydra.sweep.dir" else []
    (tmp_path / "file").write_text("")
    for folder in ("/proc/x", tmp_path / "file" / "run"):  # no new entries in /proc; a file
        result = run_script("train.py", *multirun, f"{key}={folder}")
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"error: {key}={folder} cannot be created (")
        assert lines[0].endswith(f"choose a writable folder, e.g. {key}=outputs/run")


def test_wandb_without_an_account_logs_offline_and_says_how_to_sync(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "NETRC"))}
    env |= {"HOME": str(tmp_path / "home"), "WANDB_SILENT": "true"}  # no ~/.netrc, no login
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "train.py", *TINY, "trainer.max_epochs=1", "logger=wandb"]
        + [f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,  # no terminal: a prompt would wait or fail
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    notes = [line for line in output.splitlines() if "no W&B login" in line]
    assert len(notes) == 1 and f"wandb sync {run_dir}/wandb/offline-run-*" in notes[0]
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert list(offline.glob("*.wandb"))  # the run's records, ready for `wandb sync`


def test_the_first_screen_shows_what_matters_and_nothing_a_user_cannot_act_on(tmp_path):
    result = run_script(
        "train.py",
        *TINY,
        "trainer.max_epochs=1",
        "trainer.enable_model_summary=true",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    screen = result.stdout + result.stderr
    for noise in ("litlogger", "LeafSpec", "TPU available", "already configured with model"):
        assert noise not in screen
    assert "Total params" in screen and "final metrics" in screen
    (flops,) = [line for line in screen.splitlines() if "Total FLOPs" in line]
    assert flops.split(":")[1].split()[0] not in ("0", "")  # counted, not a column of zeros
