"""The documentation checked against the project: the site builds with warnings as errors, every
shell command of the getting-started page runs as shown at tiny sizes, and the listing of what a
run writes is complete."""

import re
import shlex

import pytest

from tests.helpers import ROOT, TINY, run_script

GETTING_STARTED = ROOT / "docs" / "getting-started.md"
WATCHING_RUNS = ROOT / "docs" / "watching-runs.md"
# What a reader replaces with the run directory that train.py printed.
RUN_DIR_PLACEHOLDER = "outputs/DATE/TIME"
# Appended to the page's own values, so the last of each key (ours) wins: seconds, not minutes.
TINY_TRAINING = [
    *TINY,
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "eval.iwae_k=2",
    "eval.iwae_images=8",
]
TINY_EVALUATION = ["eval.iwae_k=2", "eval.iwae_images=8", "eval.limit_test_batches=1"]


def shell_commands(page) -> list[str]:
    """The commands of a page's ```bash blocks, one a line, comments left out."""
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.DOTALL)
    lines = [line.split(" #", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def page_section(page, title: str) -> str:
    return page.read_text().split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    # strict: a broken link or anchor, a page left out of the navigation or a docstring reference
    # that does not resolve fails the build
    result = run_script("-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").read_text().count("doc-heading") > 10


def test_the_page_shows_the_commands_a_new_user_needs():
    commands = shell_commands(GETTING_STARTED)
    scripts = {shlex.split(command)[1] for command in commands if command.startswith("python ")}
    assert {"train.py", "eval.py", "sample.py"} <= scripts, commands
    assert any(" -m " in command for command in commands), "a sweep"


@pytest.mark.slow
def test_every_command_of_the_getting_started_page_runs_as_shown(tmp_path):
    ci = (ROOT / ".ci" / "run").read_text()
    last_run_dir = None
    for number, command in enumerate(shell_commands(GETTING_STARTED)):
        if command.startswith("pip install "):
            # installing is what CI does from nothing on every run, with these very arguments
            assert command.removeprefix("pip install ") in ci, command
            continue
        assert command.startswith("python "), f"not a command this test knows: {command}"
        if last_run_dir is not None:
            command = command.replace(RUN_DIR_PLACEHOLDER, str(last_run_dir))
        assert RUN_DIR_PLACEHOLDER not in command, f"{command}: no run before it on the page"
        script, *arguments = shlex.split(command)[1:]
        out = tmp_path / f"command_{number}"
        if script == "train.py":
            sweep = "-m" in arguments
            arguments += [*TINY_TRAINING, f"hydra.{'sweep' if sweep else 'run'}.dir={out}"]
            if not sweep:
                last_run_dir = out
        elif script == "eval.py":
            arguments += [*TINY_EVALUATION, f"hydra.run.dir={out}"]
        elif script == "sample.py":
            arguments += [f"out={out}"]
        result = run_script(script, *arguments)
        assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
        written = list(out.rglob("*"))
        assert written, f"{command} wrote nothing in {out}"


@pytest.mark.slow
def test_the_site_lists_everything_a_run_writes_in_its_directory(tmp_path):
    result = run_script(
        "train.py", *TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "eval.iwae_k=2", "eval.iwae_images=8", f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    listing = page_section(WATCHING_RUNS, "What a run writes").split("```", 2)[1]
    listed = set(re.findall(r"[\w.]+(?:/|\.\w+)", listing))
    written = {p.name + ("/" if p.is_dir() else "") for p in tmp_path.iterdir()}
    assert written <= listed, f"not in the site's listing: {sorted(written - listed)}"
