"""Bad input, interruptions and numerical faults: each case through the real code paths."""

import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from tests.helpers import ROOT, TINY, make_config, read_tensorboard, run_script
from vae_lightning.cli import train
from vae_lightning.commands import prepare_command_line
from vae_lightning.config import check_config
from vae_lightning.data import ShapesDataModule
from vae_lightning.errors import ConfigError, exit_on_config_error
from vae_lightning.reliability import NonFiniteLoss

# 256 training images in batches of 32: 8 steps per epoch, 16 in all, last.ckpt every 3 steps.
RUN = (
    *TINY,
    "data.size=320",
    "trainer.max_epochs=2",
    "callbacks.pictures.image_grids=null",
    "callbacks.step_checkpoint.every_n_train_steps=3",
)
STEPS_PER_EPOCH, STEPS = 8, 16


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a scalar over all event files of a run, as TensorBoard shows it."""
    events = read_tensorboard(run_dir / "tensorboard")
    return [(event.step, event.value) for event in events.Scalars(tag)]


def checkpoint_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


# ---- bad values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.latent_dim=1.5", "model.latent_dim"),
        ("model.beta=-0.5", "model.beta"),
        ("model.optimizer.lr=0", "model.optimizer.lr"),
        ("model.optimizer.lr=-1e-3", "model.optimizer.lr"),
        ("data.batch_size=0", "data.batch_size"),
        ("torch_threads=0", "torch_threads"),
        ("callbacks.nonfinite.on_nonfinite=ignore", "callbacks.nonfinite.on_nonfinite"),
        ("callbacks.nonfinite.every_n_steps=0", "callbacks.nonfinite.every_n_steps"),
        ("callbacks.step_checkpoint.every_n_train_steps=0", "callbacks.step_checkpoint"),
    ],
)
def test_bad_value_names_key_and_what_is_allowed(tmp_path, override, key):
    with pytest.raises(ConfigError, match=rf"^{key}.*=.* is not allowed: \S"):
        check_config(make_config(tmp_path, override))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["model=foo"], "model='foo' is not allowed: one of conv, hierarchical, m2, mlp, vqvae, "),
        (["model.network=resnet"], "model.network='resnet' is not allowed: one of conv, "),
        (["model.likelihood=gaussian_lerned"], "model.likelihood='gaussian_lerned' is not "),
        (["data=foo", "model.beta=2"], "data='foo' is not allowed: one of celeba, cifar10, "),
        (["-m", "model=conv,foo"], "model='foo' is not allowed: one of conv, hierarchical, m2, "),
        (["+experiment=nope"], "experiment='nope' is not allowed: one of beta_vae_shapes"),
        (["arm=beta_tc"], "arm='beta_tc' is not allowed: one of beta_tc_beta4, beta_tc_beta8"),
    ],
)
def test_unknown_group_option_is_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        prepare_command_line(ROOT / "conf", "train", argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}")


def test_known_options_and_values_pass_unchanged(tmp_path):
    argv = ["-m", "model=conv,mlp", "hydra/launcher=joblib", "model.beta=2"]
    assert prepare_command_line(ROOT / "conf", "train", argv) == argv
    # a group set to null: Hydra takes none on the command line (a traceback), only ~group
    no_experiment = prepare_command_line(ROOT / "conf", "train", [*argv, "experiment=null"])
    assert no_experiment == [*argv, "~experiment"]
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("network: mlp\n")
    argv = ["--config-dir", str(tmp_path), "model=mine"]  # a group option from another folder
    prepared = prepare_command_line(ROOT / "conf", "train", argv)
    assert prepared[:-1] == argv and prepared[-1].startswith("hydra.run.dir=")  # named once


@pytest.mark.slow
def test_train_py_unknown_group_option_is_one_line(tmp_path):
    result = run_script("train.py", "model=foo", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: model='foo' is not allowed: one of conv, hierarchical, m2, mlp, vqvae, vqvae_prior "
        "(the files in conf/model/)"
    ]


def test_full_error_keeps_the_traceback_of_a_config_error(monkeypatch):
    @exit_on_config_error
    def main():
        raise ConfigError("model.latent_dim", 0, "a positive integer")

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError):  # raised on to Hydra, which prints it with its traceback
        main()


# ---- checkpoints given to resume from ---------------------------------------------------------


def test_missing_or_foreign_checkpoint_is_refused_before_training(tmp_path):
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("not a checkpoint")
    for path, reason in [(tmp_path / "nope.ckpt", "no such file"), (not_a_checkpoint, "not a")]:
        with pytest.raises(ConfigError, match=rf"^ckpt_path='{path}' is not allowed: {reason}"):
            train(make_config(tmp_path / "run", *RUN, f"ckpt_path={path}"))
    assert not (tmp_path / "run" / "checkpoints").exists()


class OfflineData(ShapesDataModule):
    """Stands for a torchvision set whose files are not under data.root, with no network."""

    def prepare_data(self) -> None:
        raise ConfigError("data.root", "/nowhere", "a folder holding the data (offline)")


def test_config_error_while_loading_data_reaches_the_one_line_handler(tmp_path):
    config = make_config(tmp_path, *RUN, f"data._target_={__name__}.OfflineData")
    with pytest.raises(ConfigError, match=r"^data.root='/nowhere' is not allowed"):
        train(config)
    assert not (tmp_path / "checkpoints").exists()


# ---- a baseline run: determinism, model shape of a checkpoint, resumed runs compare to it -----


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("baseline")
    metrics = train(make_config(run_dir, *RUN))
    assert (metrics["epochs"], metrics["steps"]) == (2, STEPS)
    return run_dir


@pytest.mark.slow
def test_same_seed_gives_identical_losses_at_every_step(tmp_path, baseline):
    train(make_config(tmp_path, *RUN))
    for tag in ("train/loss", "val/loss"):
        again, first = scalars(tmp_path, tag), scalars(baseline, tag)
        assert again == first  # exactly: same steps, same float32 values
    assert [step for step, _ in scalars(baseline, "train/loss")] == list(range(STEPS))


@pytest.mark.slow
def test_checkpoint_of_another_model_shape_names_the_hparam(tmp_path, baseline):
    last = baseline / "checkpoints" / "last.ckpt"
    config = make_config(tmp_path, *RUN, "model.latent_dim=8", f"ckpt_path={last}")
    with pytest.raises(ConfigError) as error:
        train(config)
    assert str(error.value) == (
        f"model.latent_dim=8 is not allowed: the checkpoint {last} has model.latent_dim=4"
    )


# ---- interruptions ----------------------------------------------------------------------------


def start_and_wait_for_checkpoint(run_dir: Path) -> subprocess.Popen:
    """train.py with RUN in run_dir, returned once it has saved its first last.ckpt."""
    process = subprocess.Popen(
        [sys.executable, "train.py", *RUN, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    while not last.exists():  # AtomicCheckpointIO puts a whole file in place, by a rename
        assert process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.01)
    return process


def assert_same_history(run_dir: Path, baseline: Path) -> None:
    for tag in ("train/loss", "val/loss", "test/loss"):
        steps = [step for step, _ in scalars(run_dir, tag)]
        assert steps == [step for step, _ in scalars(baseline, tag)], tag
        assert all(math.isfinite(value) for _, value in scalars(run_dir, tag))


@pytest.mark.slow
def test_resume_after_sigkill_mid_epoch(tmp_path, baseline):
    run_dir = tmp_path / "run"
    process = start_and_wait_for_checkpoint(run_dir)
    process.kill()  # SIGKILL: nothing runs on the way out
    process.wait()
    step = checkpoint_step(run_dir / "checkpoints" / "last.ckpt")
    assert step % STEPS_PER_EPOCH and not (run_dir / "metrics.json").exists()  # mid-epoch

    result = run_script("train.py", f"resume={run_dir}")  # the documented command
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = (run_dir / "metrics.json").read_text()
    assert '"epochs": 2' in metrics and f'"steps": {STEPS}' in metrics
    assert_same_history(run_dir, baseline)
    # What any TensorBoard reader needs to hide the killed process's steps past the checkpoint.
    restarts = [
        event.step
        for path in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"))
        for event in EventFileLoader(str(path)).Load()
        if event.HasField("session_log") and event.session_log.status == event.session_log.START
    ]
    assert restarts == [step]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_save_a_checkpoint_then_resume(tmp_path, baseline, signum):
    run_dir = tmp_path / "run"
    process = start_and_wait_for_checkpoint(run_dir)
    process.send_signal(signum)
    stderr = process.communicate(timeout=300)[1]
    assert process.returncode == 128 + signum
    last = run_dir / "checkpoints" / "last.ckpt"
    step = checkpoint_step(last)
    assert stderr.splitlines()[-1] == (
        f"error: {signal.Signals(signum).name} at step {step}: checkpoint saved to {last}; "
        f"continue with: python train.py resume={run_dir}"
    )
    assert step < STEPS and not (run_dir / "metrics.json").exists()

    if signum == signal.SIGTERM:  # resuming is the same after either signal
        metrics = train(make_config(run_dir, *RUN, "ckpt_path=last"))  # in-process this time
        assert (metrics["epochs"], metrics["steps"]) == (2, STEPS)
        assert_same_history(run_dir, baseline)


# ---- numerics ---------------------------------------------------------------------------------


def poisoned(run_dir: Path, *overrides: str):
    return make_config(
        run_dir, *RUN, "data._target_=tests.helpers.PoisonedShapes", "+data.nan_step=4", *overrides
    )


def all_finite(checkpoint: Path) -> bool:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return all(torch.isfinite(tensor).all() for tensor in state.values())


@pytest.mark.slow
def test_nan_loss_stops_at_its_step_keeping_the_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLoss) as error:
        train(poisoned(tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert str(error.value).startswith(
        "train/loss=nan at step 4 (epoch 0, batch 4): training stopped, "
        f"last good checkpoint: {last}; "
    )
    assert checkpoint_step(last) == 3 and all_finite(last)
    assert [step for step, _ in scalars(tmp_path, "train/loss")] == [0, 1, 2, 3]


@pytest.mark.slow
def test_nan_loss_read_back_late_still_stops_before_any_checkpoint_holds_it(tmp_path):
    # Losses read back every 100 steps: the NaN of step 4 is found when step 6's last.ckpt is
    # about to be written, and that write does not happen.
    with pytest.raises(NonFiniteLoss) as error:
        train(poisoned(tmp_path, "callbacks.nonfinite.every_n_steps=100"))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert str(error.value).startswith(
        "train/loss=nan at step 4 (epoch 0, batch 4): training stopped, "
        f"last good checkpoint: {last}; "
    )
    assert [path.name for path in last.parent.iterdir()] == ["last.ckpt"]
    assert checkpoint_step(last) == 3 and all_finite(last)
    # the steps after the NaN ran (no per-step read); the sixth (logged as step 5, after the
    # checkpoint that stopped the run) was not logged
    assert [step for step, _ in scalars(tmp_path, "train/loss")] == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_nan_loss_without_checkpoints_stops_by_the_end_of_the_epoch(tmp_path):
    config = poisoned(
        tmp_path,
        "callbacks.nonfinite.every_n_steps=100",
        "callbacks.model_checkpoint=null",
        "callbacks.step_checkpoint=null",
    )
    with pytest.raises(NonFiniteLoss, match=r"^train/loss=nan at step 4 \(epoch 0, batch 4\): "):
        train(config)
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.slow
def test_nan_loss_skipped_by_config(tmp_path):
    config = poisoned(tmp_path, "callbacks.nonfinite.on_nonfinite=skip", "trainer.max_epochs=1")
    metrics = train(config)
    assert metrics["steps"] == STEPS_PER_EPOCH and math.isfinite(metrics["test/loss"])
    assert all_finite(tmp_path / "checkpoints" / "last.ckpt")
    losses = dict(scalars(tmp_path, "train/loss"))
    assert math.isnan(losses.pop(4))  # the skipped batch is visible in the history
    assert all(math.isfinite(value) for value in losses.values())
