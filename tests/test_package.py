"""The package as a user installs it: a wheel in a fresh virtual environment, whose commands run
from any directory on the configs shipped inside it, with a user's own config folder added."""

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, TINY

pytestmark = pytest.mark.slow


PURELIB = "import sysconfig; print(sysconfig.get_paths()['purelib'])"


def site_packages() -> list[str]:
    """The folders this interpreter imports installed packages from."""
    return [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]


def run(*args, cwd, check=True):
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert not check or result.returncode == 0, result.stderr[-3000:]
    return result


def test_an_installed_wheel_trains_from_any_directory_with_a_users_own_config(tmp_path):
    dist, env, elsewhere = tmp_path / "dist", tmp_path / "venv", tmp_path / "elsewhere"
    run(sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
        "-w", str(dist), cwd=ROOT)  # fmt: skip
    (wheel,) = dist.glob("vae_lightning-*.whl")
    # torch and the rest from the site-packages of the environment running the tests (a venv or
    # not: a venv's system_site_packages would be its base interpreter's, without them), added
    # as plain paths after the new environment's own, where the wheel goes; plain paths, not site
    # dirs, so the .pth of this checkout's editable install is not read there
    venv.create(env, with_pip=True)
    python, bin_dir = env / "bin" / "python", env / "bin"
    purelib = Path(run(python, "-c", PURELIB, cwd=tmp_path).stdout.strip())
    (purelib / "tested_environment.pth").write_text("\n".join(site_packages()) + "\n")
    run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel), cwd=tmp_path)
    elsewhere.mkdir()
    located = run(python, "-c", "import vae_lightning.conf as c; print(c.__file__)", cwd=elsewhere)
    assert located.stdout.startswith(str(env))  # not this checkout's conf/
    # the feature network's weights ship inside, and load there with their SHA-256 checked
    load_weights = (
        "import vae_lightning.features as f; f.FASHION_MNIST.classifier(); "
        "print(f.FASHION_MNIST.weights)"
    )
    shipped = run(python, "-c", load_weights, cwd=elsewhere)
    assert shipped.stdout.startswith(str(env))

    # a user's own model config, beside the packaged ones, through Hydra's search path
    (elsewhere / "my_conf" / "model").mkdir(parents=True)
    (elsewhere / "my_conf" / "model" / "mine.yaml").write_text(
        "defaults:\n  - conv\n  - _self_\nlatent_dim: 3\nnetwork:\n  dense_dim: 24\n"
    )
    tiny = [o for o in TINY if not o.startswith(("model.latent_dim", "model.network.dense_dim"))]
    result = run(
        bin_dir / "vae-train", "--config-dir", "my_conf", "model=mine", *tiny,
        "trainer.max_epochs=1", "hydra.run.dir=run", cwd=elsewhere,
    )  # fmt: skip
    config = yaml.safe_load((elsewhere / "run" / ".hydra" / "config.yaml").read_text())
    network = config["model"]["network"]
    assert (config["model"]["latent_dim"], network["dense_dim"]) == (3, 24)
    assert network["hidden_dims"] == [8, 16]  # TINY's, over conv.yaml's
    metrics = json.loads((elsewhere / "run" / "metrics.json").read_text())
    assert len(metrics["test/kl_per_dim"]) == 3

    # the other commands, from the same directory, on the same run
    best = metrics["best_checkpoint"]
    run(bin_dir / "vae-sample", f"ckpt_path={best}", "n=8", "out=pictures", cwd=elsewhere)
    assert (elsewhere / "pictures").is_dir() and any((elsewhere / "pictures").glob("*.png"))
    result = run(bin_dir / "vae-train", "model=mime", cwd=elsewhere, check=False)
    assert result.returncode == 2 and result.stderr.startswith("error: model='mime'")
