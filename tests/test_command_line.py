"""The command line of train.py, eval.py, sample.py and export.py, through the scripts: a refused
command writes nothing and loads no torch, several loggers at once, a seed that is no integer,
the run directory and the composed config shown at the start."""

import inspect
import json

import lightning as L
import pytest
from omegaconf import OmegaConf

from tests.helpers import ROOT, TINY, make_config, run_script
from vae_lightning.commands import prepare_command_line
from vae_lightning.config import trainer_arguments


def refused(result) -> str:
    """The one line of a refused command (exit status 2, no traceback)."""
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


@pytest.fixture
def not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_text("not a checkpoint")
    return path


def run_in(folder, script, *args):
    return run_script(str(ROOT / script), *args, cwd=folder)


# Refused before Hydra starts: by the checks of the command line and its composed config.
REFUSED_BEFORE_HYDRA = [
    ("train.py", "model.latent_dim=0"),
    ("train.py", "seed=abc"),
    ("train.py", "model.latnt_dim=3"),
    ("train.py", "model=foo"),
    ("train.py", "trainer.limt_train_batches=5"),
    ("train.py", "ckpt_path=nowhere.ckpt"),
    ("train.py", "print_config=yes"),
    ("eval.py",),
    ("eval.py", "ckpt_path=nowhere.ckpt"),
    ("sample.py", "n=0"),
    ("export.py", "ckpt_path=nowhere.ckpt"),
]


# Refused by a part's own check as train.py builds the parts on the meta device before Hydra
# starts: torch is imported for that, Lightning never.
REFUSED_BY_A_PART = [
    ("train.py", "data.image_size=30"),
    ("train.py", "model.likelihood=gaussian_learned", "model.likelihood.per=pixel"),
]


def imports_of_a_refused_command(tmp_path, command) -> set[str]:
    """The modules a command imported before it was refused in one line, having written
    nothing."""
    script, *args = command
    result = run_script("-X", "importtime", str(ROOT / script), *args, cwd=tmp_path)
    timings = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    errors = [line for line in result.stderr.splitlines() if line not in timings]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("error: ")
    assert list(tmp_path.iterdir()) == []
    imported = {line.rpartition("|")[2].strip().split(".")[0] for line in timings}
    assert {"vae_lightning", "hydra"} <= imported  # the checks ran, in this process
    return imported


@pytest.mark.parametrize("command", REFUSED_BEFORE_HYDRA, ids=" ".join)
def test_a_command_refused_before_hydra_writes_nothing_and_never_imports_torch(tmp_path, command):
    assert not imports_of_a_refused_command(tmp_path, command) & {"torch", "lightning"}


@pytest.mark.parametrize("command", REFUSED_BY_A_PART, ids=" ".join)
def test_a_value_a_part_refuses_writes_nothing_and_never_imports_lightning(tmp_path, command):
    assert "lightning" not in imports_of_a_refused_command(tmp_path, command)


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ("train.py", "ckpt_path={ckpt}"),
        ("eval.py", "ckpt_path={ckpt}"),
        ("sample.py", "ckpt_path={ckpt}"),
        ("export.py", "ckpt_path={ckpt}", "out=exported"),
    ],
    ids=lambda command: command[0],
)
def test_a_command_refused_inside_its_job_removes_its_run_directory(
    tmp_path, not_a_checkpoint, command
):
    # a file that is no checkpoint is found out only by loading it, after Hydra has started
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    script, *args = command
    result = run_in(cwd, script, *(arg.format(ckpt=not_a_checkpoint) for arg in args))
    assert "not a checkpoint" in refused(result)
    assert list(cwd.iterdir()) == []


@pytest.mark.slow
def test_a_refused_resume_leaves_the_run_directory_as_it_was(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    config = make_config(run_dir)
    del config.paths.output_dir  # as a run saves it: Hydra's run directory
    OmegaConf.save(config, run_dir / ".hydra" / "config.yaml")
    (run_dir / "checkpoints" / "last.ckpt").write_text("damaged")
    (run_dir / "metrics.json").write_text("{}")
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    result = run_in(cwd, "train.py", f"resume={run_dir}")
    assert "not a checkpoint" in refused(result)
    assert (run_dir / "checkpoints" / "last.ckpt").read_text() == "damaged"
    assert (run_dir / "metrics.json").read_text() == "{}"
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("train.py", []),
        ("eval.py", ["ckpt_path={ckpt}"]),
        ("sample.py", ["ckpt_path={ckpt}"]),
        ("export.py", ["ckpt_path={ckpt}", "out=exported"]),
    ],
)
def test_a_seed_that_is_no_integer_is_one_line(tmp_path, not_a_checkpoint, script, args):
    args = [arg.format(ckpt=not_a_checkpoint) for arg in args]
    result = run_in(tmp_path, script, *args, "seed=abc")
    assert refused(result) == "error: seed='abc' is not allowed: an integer, e.g. seed=0"


def test_an_image_size_the_conv_network_cannot_halve_names_both_keys(tmp_path):
    result = run_in(
        tmp_path, "train.py", "data.image_size=30", "model.network.hidden_dims=[8,16,32]"
    )
    assert refused(result) == (
        "error: model.network.hidden_dims=[8, 16, 32] is not allowed: a conv network with 3 "
        "stride-2 layers needs height and width divisible by 8, got 30x30: fewer layers, or "
        "another data.image_size"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["logger=[tensorboard,csv]", "trainer.limt_train_batches=5"],
            "error: trainer.limt_train_batches is not an argument of lightning.Trainer: did you "
            "mean trainer.limit_train_batches",
        ),
        (
            ["logger=[tensorboard,csv]", "model.latnt_dim=3"],
            "error: model.latnt_dim is not a key of model: did you mean model.latent_dim?",
        ),
        (
            ["logger=[tensorboard,cs]"],
            "error: logger='cs' is not allowed: one of csv, many_loggers, tensorboard, wandb",
        ),
    ],
)
def test_a_list_of_loggers_keeps_the_command_line_checked(tmp_path, argv, message):
    assert refused(run_in(tmp_path, "train.py", *argv)).startswith(message)


def test_many_loggers_is_tensorboard_and_csv(tmp_path):
    assert sorted(make_config(tmp_path, "logger=many_loggers").logger) == ["csv", "tensorboard"]


@pytest.mark.slow
def test_a_run_with_a_list_of_loggers_shows_its_directory_and_config_first(tmp_path):
    run_dir = tmp_path / "run"
    result = run_script(
        "train.py",
        *TINY,
        "logger=[tensorboard,csv]",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.max_epochs=1",
        "eval.iwae_k=2",
        "eval.iwae_images=8",
        "trainer.enable_progress_bar=true",  # piped: one log line per epoch
        "print_config=true",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 2
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "csv" / "metrics.csv").read_text().startswith("epoch,")
    for output in (result.stdout, (run_dir / "train.log").read_text()):
        lines = output.splitlines()
        first_epoch = next(i for i, line in enumerate(lines) if " - epoch " in line)
        (run_line,) = [
            i for i, line in enumerate(lines) if line.endswith(f"run directory: {run_dir}")
        ]
        assert run_line < first_epoch
        # the composed config, resolved, between the two
        config = "\n".join(lines[run_line + 2 : first_epoch])
        assert "logger:\n  tensorboard:" in config and "  csv:\n" in config
        assert f"output_dir: {run_dir}" in config and "print_config: true" in config


def test_every_argument_of_lightnings_trainer_is_read_from_its_source():
    parameters = inspect.signature(L.Trainer.__init__).parameters
    assert trainer_arguments() == tuple(name for name in parameters if name != "self")


def test_a_new_run_directory_is_named_among_the_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["model.latent_dim=3", "--cfg", "job"]  # Hydra takes its overrides in one run
    prepared = prepare_command_line(ROOT / "conf", "train", argv)
    assert prepared[0] == "model.latent_dim=3" and prepared[2:] == ["--cfg", "job"]
    assert prepared[1].startswith(f"hydra.run.dir='{tmp_path / 'outputs'}")
    assert list(tmp_path.iterdir()) == []
    existing = ["model.latent_dim=3", f"hydra.run.dir={tmp_path}"]  # nothing to remove later
    assert prepare_command_line(ROOT / "conf", "train", existing) == existing
