"""What train.py and eval.py print and log, read back from real runs: the same record in train.log
whether the output is a terminal or a pipe, one epoch numbering in the log, the pictures and the
checkpoints, no '=' in any file name, an epoch time that is right after a resume, and none of the
libraries' lines a user cannot act on."""

import os
import pty
import re
import signal
import subprocess
import sys
import time

import pytest
from lightning.pytorch.callbacks import Callback

from tests.helpers import ROOT, TINY, run_script

pytestmark = pytest.mark.slow

# Two epochs of two steps; the pictures of the image grids only, every epoch.
RUN = (
    *TINY,
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=true",
    "eval.iwae_k=2",
    *(f"callbacks.pictures.{name}=null" for name in ("latent_traversals", "interpolations")),
    *(f"callbacks.pictures.{name}=null" for name in ("latent_map", "kl_per_dim")),
)
EPOCH_LINE = re.compile(
    r"\]\[vae_lightning\.callbacks\]\[INFO\] - epoch (\d+)/(\d+) .*\(([\d.]+) s\)$"
)
SIGINT_AT = "VAE_TEST_SIGINT_AT"


def epoch_lines(text: str) -> list[tuple[int, int, float]]:
    """(epoch, last epoch, seconds) of each epoch line."""
    found = (EPOCH_LINE.search(line) for line in text.splitlines())
    return [(int(m[1]), int(m[2]), float(m[3])) for m in found if m]


def table_rows(text: str) -> list[str]:
    """The metric names of the final metrics table's rows."""
    return re.findall(r"^│ (\S+) +│", text, flags=re.MULTILINE)


def run_on_a_terminal(*args: str) -> tuple[int, str]:
    """Run a script of the project with a pseudo-terminal as its stdin, stdout and stderr."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, stdin=follower, stdout=follower, stderr=follower
    )
    os.close(follower)
    output = bytearray()
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process has closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    return process.wait(timeout=600), output.decode(errors="replace")


@pytest.fixture(scope="module")
def piped(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("piped")
    result = run_script("train.py", *RUN, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result.stdout + result.stderr


def test_train_log_holds_the_same_record_on_a_terminal_or_not(piped, tmp_path):
    piped_dir, _ = piped
    status, screen = run_on_a_terminal("train.py", *RUN, f"hydra.run.dir={tmp_path}")
    assert status == 0, screen[-3000:]
    assert "Epoch 1/1" in screen  # Rich's live bar
    assert not epoch_lines(screen)  # the bar shows them
    for run_dir in (piped_dir, tmp_path):
        log = (run_dir / "train.log").read_text()
        assert [(epoch, last) for epoch, last, _ in epoch_lines(log)] == [(0, 1), (1, 1)]
        rows = table_rows(log)
        assert {"test/elbo", "val/loss", "best_checkpoint", "epochs"} <= set(rows), log
        assert len(rows) == len(set(rows))  # once


def test_one_epoch_numbering_and_no_equals_sign_in_any_file_name(piped):
    run_dir, output = piped
    names = [path.relative_to(run_dir) for path in run_dir.rglob("*")]
    assert names and not [name for name in names if "=" in str(name)]
    logged = [epoch for epoch, _, _ in epoch_lines(output)]
    drawn = sorted(int(p.stem[-3:]) for p in (run_dir / "images").glob("samples_epoch_*.png"))
    saved = [int(p.stem[-3:]) for p in (run_dir / "checkpoints").glob("epoch_*.ckpt")]
    assert logged == drawn == [0, 1] and saved and set(saved) <= set(logged)
    reconstructions = sorted((run_dir / "images").glob("reconstructions_epoch_*.png"))
    assert [p.name for p in reconstructions] == [f"reconstructions_epoch_00{e}.png" for e in (0, 1)]


def test_eval_py_prints_no_tip_and_no_note_on_its_batches(piped, tmp_path):
    run_dir, _ = piped
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    result = run_script(
        "eval.py", f"ckpt_path={ckpt}", "eval.iwae_k=2", f"hydra.run.dir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "litmodels" not in output and "was configured so" not in output
    assert "test/elbo" in table_rows((tmp_path / "eval.log").read_text())


class CtrlCAt(Callback):
    """Sends its own process SIGINT, as Ctrl-C does, when training step $VAE_TEST_SIGINT_AT
    starts."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if os.environ.get(SIGINT_AT) == str(trainer.global_step):
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_then_resume_times_the_resumed_epoch_and_prints_no_warnings(tmp_path):
    stopped = run_script(
        "train.py", *RUN, "trainer.max_epochs=1", "trainer.limit_train_batches=4",
        f"+callbacks.ctrl_c._target_={__name__}.CtrlCAt", f"hydra.run.dir={tmp_path}",
        env={**os.environ, SIGINT_AT: "1"},
    )  # fmt: skip
    assert stopped.returncode == 128 + signal.SIGINT, stopped.stderr[-3000:]
    assert "weights_only" not in stopped.stdout + stopped.stderr

    started = time.perf_counter()
    resumed = run_script("train.py", f"resume={tmp_path}")  # mid-epoch: after step 2 of 4
    wall_time = time.perf_counter() - started
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    output = resumed.stdout + resumed.stderr
    assert "exists and is not empty" not in output
    ((epoch, _, seconds),) = epoch_lines(output)
    assert epoch == 0 and 0 < seconds < wall_time


def test_wandb_offline_prints_no_note_on_the_anonymous_setting(tmp_path):
    result = run_script(
        "train.py", *RUN, "trainer.max_epochs=1", "logger=wandb", f"hydra.run.dir={tmp_path}",
        env={**os.environ, "WANDB_MODE": "offline"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "anonymous" not in result.stdout + result.stderr
