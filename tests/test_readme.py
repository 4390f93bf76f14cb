"""What the README tells a new user, checked against what the project really does."""

import re

import pytest

from tests.helpers import ROOT, TINY, run_script

README = (ROOT / "README.md").read_text()


def readme_section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.slow
def test_the_readme_lists_everything_a_run_writes_in_its_directory(tmp_path):
    result = run_script(
        "train.py", *TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "eval.iwae_k=2", "eval.iwae_images=8", f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    listing = readme_section("Watching a run").split("```", 2)[1]
    listed = set(re.findall(r"[\w.]+(?:/|\.\w+)", listing))
    written = {p.name + ("/" if p.is_dir() else "") for p in tmp_path.iterdir()}
    assert written <= listed, f"not in the README's listing: {sorted(written - listed)}"


def test_the_readme_says_how_to_install_the_cpu_only_torch_before_the_first_command():
    # The first lines stay the two set-up commands; the CPU-only install follows them.
    assert README.startswith(
        '# vae-lightning\n\n```bash\npip install -e ".[dev]" && python train.py'
    )
    first_command = README.index('pip install -e ".[dev]"')
    cpu = README.index("--index-url https://download.pytorch.org/whl/cpu")
    assert first_command < cpu < README.index("\n## ")
