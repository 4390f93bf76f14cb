"""Exact resume: a run killed mid-epoch and resumed ends with the same weights, optimiser state and
logged losses as one never interrupted; checkpoints are written whole or not at all; a damaged
last.ckpt is passed over for the newest intact checkpoint."""

import errno
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.helpers import TINY, make_config, read_tensorboard, run_script
from vae_lightning.cli import train
from vae_lightning.reliability import AtomicCheckpointIO

# 256 training images in batches of 32: 8 steps per epoch, 16 in all, last.ckpt every 3 steps.
# Every run has the killer callback; it kills only the process whose environment names a step.
RUN = (
    *TINY,
    "data.size=320",
    "trainer.max_epochs=2",
    "callbacks.pictures.image_grids=null",
    "callbacks.step_checkpoint.every_n_train_steps=3",
    f"+callbacks.killer._target_={__name__}.KillAtStep",
)
STEPS_PER_EPOCH, STEPS = 8, 16
KILL_AT = "VAE_TEST_SIGKILL_AT_STEP"


class KillAtStep(L.Callback):
    """SIGKILLs its own process as the training step named by $VAE_TEST_SIGKILL_AT_STEP starts:
    a kill at a known point of a run, past its last checkpoint, with nothing run on the way out."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if os.environ.get(KILL_AT) == str(trainer.global_step):
            os.kill(os.getpid(), signal.SIGKILL)


def train_py(run_dir: Path, kill_at: int | None = None, *args: str):
    env = {k: v for k, v in os.environ.items() if k != KILL_AT}
    if kill_at is not None:
        env[KILL_AT] = str(kill_at)
    return run_script("train.py", *(args or (*RUN, f"hydra.run.dir={run_dir}")), env=env)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    events = read_tensorboard(run_dir / "tensorboard")
    return [(event.step, event.value) for event in events.Scalars(tag)]


def assert_same_state(a, b, where: str = "") -> None:
    """Nested dicts, lists and tensors, equal exactly (tensors by torch.equal)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def assert_same_as_uninterrupted(run_dir: Path, baseline: Path) -> None:
    resumed = load(run_dir / "checkpoints" / "last.ckpt")
    uninterrupted = load(baseline / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == uninterrupted["global_step"] == STEPS
    assert_same_state(resumed["state_dict"], uninterrupted["state_dict"], "state_dict")
    assert_same_state(resumed["optimizer_states"], uninterrupted["optimizer_states"], "optim")
    for tag in ("train/loss", "val/loss"):
        assert scalars(run_dir, tag) == scalars(baseline, tag), tag  # exactly, step by step
    assert [step for step, _ in scalars(run_dir, "train/loss")] == list(range(STEPS))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """An uninterrupted run, started the same way as the killed ones."""
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = train_py(run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


# ---- resumable data order and random states ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("kill_at", "saved_at"), [(5, 3), (11, 9)])  # in epoch 0 and epoch 1
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(
    tmp_path, baseline, kill_at, saved_at
):
    run_dir = tmp_path / "run"
    killed = train_py(run_dir, kill_at)
    assert killed.returncode == -signal.SIGKILL
    last = load(run_dir / "checkpoints" / "last.ckpt")
    assert last["global_step"] == saved_at and saved_at % STEPS_PER_EPOCH  # mid-epoch
    assert last["loops"]["fit_loop"]["state_dict"]["combined_loader"]  # the loader's position

    resumed = train_py(run_dir, None, f"resume={run_dir}")  # the documented command
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr  # Lightning's warning for a loader without state
    assert_same_as_uninterrupted(run_dir, baseline)


# ---- atomic checkpoints -----------------------------------------------------------------------


def test_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 3, "w": torch.arange(1000)}, path)

    def disk_full(self, checkpoint, file):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(AtomicCheckpointIO, "_write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 6, "w": torch.zeros(1000)}, path)
    saved = load(path)
    assert saved["global_step"] == 3 and torch.equal(saved["w"], torch.arange(1000))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left


@pytest.mark.slow
def test_disk_full_during_a_training_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """Through the Trainer conf/trainer/ builds: its checkpoints go through AtomicCheckpointIO."""
    write = AtomicCheckpointIO._write
    calls = []

    def second_write_fails(self, checkpoint, file):
        calls.append(checkpoint["global_step"])
        if len(calls) == 2:  # the step checkpoint at step 6
            file.write(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, checkpoint, file)

    monkeypatch.setattr(AtomicCheckpointIO, "_write", second_write_fails)
    with pytest.raises(OSError, match="No space left"):
        train(make_config(tmp_path, *RUN))
    assert calls == [3, 6]
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert load(last)["global_step"] == 3
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]


# ---- a damaged last.ckpt ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "not a checkpoint"])
def test_damaged_last_ckpt_resumes_from_the_newest_intact_one(tmp_path, baseline, damage):
    run_dir = tmp_path / "run"
    killed = train_py(run_dir, 10)  # past epoch_000.ckpt (step 8) and last.ckpt (step 9)
    assert killed.returncode == -signal.SIGKILL
    checkpoints = run_dir / "checkpoints"
    intact, last = checkpoints / "epoch_000.ckpt", checkpoints / "last.ckpt"
    assert load(intact)["global_step"] == 8 and load(last)["global_step"] == 9
    if damage == "truncated":
        data = last.read_bytes()
        last.write_bytes(data[: len(data) // 2])
    else:
        last.write_text("not a checkpoint")

    resumed = train_py(run_dir, None, f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    warnings = [
        line
        for line in (resumed.stdout + resumed.stderr).splitlines()
        if "damaged" in line and str(last) in line
    ]
    assert len(warnings) == 1 and f"resuming from {intact}" in warnings[0], warnings
    assert_same_as_uninterrupted(run_dir, baseline)  # an epoch-end checkpoint resumes exactly
