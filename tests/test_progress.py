"""Progress of long work that is not training: lines in a log, a bar on a terminal, nothing for
short work; and where the project uses it (eval.py's IWAE bound, the shapes, a sweep report)."""

import io
import json
import logging
import os
import re
import sys

import pytest
import yaml

from tests.helpers import ROOT, run_script
from vae_lightning import progress, sweep
from vae_lightning.cli import train
from vae_lightning.data.shapes import render, sample_factor_indices
from vae_lightning.progress import Progress

LINE = re.compile(r"^work: (\d+)% \([\d,.]+/100 images\), [\d.,]+ images/s, [\dms. ]+ left$")


@pytest.fixture
def fake_clock(monkeypatch):
    """A clock that only moves when the test says: `fake_clock.now += seconds`."""

    class Clock:
        now = 1000.0

        def __call__(self):
            return self.now

    clock = Clock()
    monkeypatch.setattr(progress, "clock", clock)
    monkeypatch.delenv(progress.AFTER_VARIABLE, raising=False)
    return clock


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vae_lightning.progress"]


def run_work(clock, steps: int, seconds_per_step: float, **options) -> None:
    with Progress("work", steps, "images", **options) as work:
        for _ in range(steps):
            clock.now += seconds_per_step
            work.advance()


def test_a_line_per_tenth_with_rate_and_time_left_when_not_a_terminal(fake_clock, caplog):
    caplog.set_level(logging.INFO)
    run_work(fake_clock, 100, 0.5)  # 50 s: shown from 2 s on
    lines = messages(caplog)
    *steps, end = lines
    assert LINE.match(steps[0]) and steps[0].startswith("work: 4% (4/100 images), 2 images/s")
    assert [int(LINE.match(line)[1]) for line in steps[1:]] == list(range(10, 100, 10))
    assert steps[1] == "work: 10% (10/100 images), 2 images/s, 45.0s left"
    assert end == "work: 100 images in 50.0s, 2 images/s"


def test_nothing_for_work_done_within_the_delay(fake_clock, caplog):
    caplog.set_level(logging.INFO)
    run_work(fake_clock, 10_000, 0.0001)  # 1 s, many steps
    run_work(fake_clock, 1, 1.5)  # one step, 1.5 s
    assert messages(caplog) == []


def test_a_long_single_step_gets_its_closing_line_only(fake_clock, caplog):
    caplog.set_level(logging.INFO)
    run_work(fake_clock, 1, 600)
    assert messages(caplog) == ["work: 1 images in 10m 00s, 0.00167 images/s"]


def test_failed_work_ends_without_a_closing_line(fake_clock, caplog):
    caplog.set_level(logging.INFO)
    with pytest.raises(KeyError), Progress("work", 100, "images") as work:
        for _ in range(50):
            fake_clock.now += 1
            work.advance()
        raise KeyError("boom")
    assert messages(caplog) and not any(" in " in line for line in messages(caplog))


@pytest.mark.parametrize(
    ("value", "after"), [("0", 0.0), ("7.5", 7.5), ("off", float("inf")), ("", 2.0)]
)
def test_the_delay_comes_from_the_environment(monkeypatch, value, after):
    monkeypatch.setenv(progress.AFTER_VARIABLE, value)
    assert progress.progress_after() == after


def test_a_bad_delay_in_the_environment_is_a_warning_and_the_default(monkeypatch, caplog):
    monkeypatch.setenv(progress.AFTER_VARIABLE, "soon")
    assert progress.progress_after() == progress.DEFAULT_AFTER
    assert "VAE_PROGRESS_AFTER='soon' is not a number of seconds" in messages(caplog)[0]


def test_with_the_delay_off_nothing_even_for_long_work(fake_clock, monkeypatch, caplog):
    monkeypatch.setenv(progress.AFTER_VARIABLE, "off")
    caplog.set_level(logging.INFO)
    run_work(fake_clock, 100, 10)
    assert messages(caplog) == []


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_on_a_terminal_and_one_closing_line_in_the_log(fake_clock, monkeypatch, caplog):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    caplog.set_level(logging.INFO)
    run_work(fake_clock, 100, 0.5)
    assert messages(caplog) == ["work: 100 images in 50.0s, 2 images/s"]
    drawn = terminal.getvalue()
    assert "work" in drawn and "images/s" in drawn and "%" in drawn


def test_a_bar_on_a_terminal_only_past_the_delay(fake_clock, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    run_work(fake_clock, 1000, 0.001)
    assert terminal.getvalue() == ""


def test_rendering_shapes_and_a_sweep_report_show_progress(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(progress.AFTER_VARIABLE, "0")  # every progress shown, however short
    caplog.set_level(logging.INFO)
    render(sample_factor_indices(4000, 0), 8, chunk=400)
    rendering = [m for m in messages(caplog) if m.startswith("rendering shapes at 8x8: ")]
    # at least one line on the way (lines are at most 10 a second: a fast machine writes few)
    assert len(rendering) >= 2 and rendering[-1].startswith("rendering shapes at 8x8: 4,000 images")

    for job in ("0", "1"):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- model.beta={job}\n")
        (tmp_path / job / ".hydra" / "config.yaml").write_text(
            yaml.safe_dump({"model": {"beta": float(job), "latent_dim": 4}})
        )
        metrics = {"test/elbo": -90.0, "test/recon": 80.0, "test/kl": 10.0}
        (tmp_path / job / "metrics.json").write_text(json.dumps(metrics))
    caplog.clear()
    sweep.write_report(tmp_path)
    report = [m for m in messages(caplog) if m.startswith("sweep report of 2 jobs: ")]
    assert report  # on the way; its own line, not a count of steps, ends the report
    assert not [line for line in report if re.search(r": [\d.]+ steps in ", line)]
    assert caplog.messages[-1] == f"sweep report of 2 jobs (0 not ok) in {tmp_path}"


@pytest.mark.slow
def test_eval_py_logs_the_progress_of_the_iwae_bound(tmp_path, tiny_config):
    trained = train(tiny_config("trainer.max_epochs=1", "eval.iwae_k=2"))
    result = run_script(
        "eval.py",
        f"ckpt_path={trained['best_checkpoint']}",
        # the training run's own data (a run of train() has no saved .hydra config)
        "data=shapes",
        "data.size=640",
        "data.eval_batch_size=64",
        "eval.iwae_k=50",
        "eval.max_rows=64",  # one draw of the 64 test images per decoder pass: 50 steps
        f"paths.root_dir={ROOT}",
        f"hydra.run.dir={tmp_path / 'eval'}",
        env={**os.environ, progress.AFTER_VARIABLE: "0"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log_lines = (tmp_path / "eval" / "eval.log").read_text().splitlines()
    iwae = [line for line in log_lines if "[vae_lightning.progress][INFO] - IWAE bound" in line]
    *steps, end = iwae
    assert steps  # at least one on the way; at most 10 lines a second
    for line in steps:
        assert re.search(
            r"IWAE bound \(k=50\): \d+% \([\d.]+/64 images\), .* images/s, .* left$", line
        )
    assert re.search(r"IWAE bound \(k=50\): 64 images in [\d.]+s, .* images/s$", end)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test/iwae_k"] == 50
