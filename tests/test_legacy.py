"""Checkpoints and an exported Hub folder of the code before the model was split into parts
(tests/data/legacy/, written by make_fixtures.py there) load in today's code, and eval.py, sample.py
and VAE.from_pretrained give the same numbers and pixels as that code did (expected.json)."""

import hashlib
import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from tests.helpers import ROOT, run_script
from vae_lightning.cli import evaluate
from vae_lightning.legacy import migrate_hparams
from vae_lightning.module import VAE
from vae_lightning.options import part_config
from vae_lightning.sampling import sample

LEGACY = ROOT / "tests" / "data" / "legacy"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())


def pixels_sha256(png) -> str:
    return hashlib.sha256(np.asarray(Image.open(png)).tobytes()).hexdigest()


def assert_same_metrics(metrics: dict, expected: dict) -> None:
    """Every metric the old code reported, to float tolerance (counts exactly)."""
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def compose_config(name: str, *overrides: str):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(name, overrides=list(overrides))


@pytest.mark.parametrize("name", sorted(EXPECTED["checkpoints"]))
def test_old_checkpoints_give_the_same_metrics_and_samples(name, tmp_path):
    ckpt, expected = LEGACY / f"{name}.ckpt", EXPECTED["checkpoints"][name]
    metrics = evaluate(
        compose_config(
            "eval",
            f"ckpt_path={ckpt}",
            *EXPECTED["data"],
            f"data.cache_dir={tmp_path / 'cache'}",
            *EXPECTED["eval"],
            f"paths.root_dir={ROOT}",
            f"paths.output_dir={tmp_path / 'eval'}",
        )
    )
    assert_same_metrics(metrics, expected["metrics"])
    (png,) = sample(
        compose_config("sample", f"ckpt_path={ckpt}", *EXPECTED["sample"], f"out={tmp_path}")
    )
    assert pixels_sha256(png) == expected["prior_png_pixels_sha256"]


@pytest.mark.slow
def test_eval_and_sample_scripts_on_an_old_checkpoint(tmp_path):
    name = "hierarchical"  # the network the refactor changes most
    ckpt, expected = LEGACY / f"{name}.ckpt", EXPECTED["checkpoints"][name]
    data = [*EXPECTED["data"], f"data.cache_dir={tmp_path / 'cache'}"]
    eval_dir = tmp_path / "eval"
    result = run_script(
        "eval.py", f"ckpt_path={ckpt}", *data, *EXPECTED["eval"], f"hydra.run.dir={eval_dir}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_metrics(json.loads((eval_dir / "metrics.json").read_text()), expected["metrics"])
    result = run_script("sample.py", f"ckpt_path={ckpt}", *EXPECTED["sample"], f"out={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert pixels_sha256(tmp_path / "prior.png") == expected["prior_png_pixels_sha256"]


def test_old_hub_folder_gives_the_same_samples():
    expected = EXPECTED["hub"]
    model = VAE.from_pretrained(LEGACY / "hub").eval()
    with torch.no_grad():
        samples = model.sample(expected["n"], torch.Generator().manual_seed(expected["seed"]))
    pixels = samples.mul(255).add(0.5).clamp(0, 255).to(torch.uint8)  # as save_image rounds
    assert hashlib.sha256(pixels.numpy().tobytes()).hexdigest() == expected["samples_sha256"]
    assert samples.double().mean().item() == pytest.approx(expected["samples_mean"], rel=1e-6)


def test_a_moved_key_in_a_config_of_today_goes_into_its_part():
    """A user's own model config of before, on today's preset: `defaults: [conv]` and a flat
    `dense_dim: 24` (the command line names the new key instead; a file cannot be refused
    before the parts, so it is read as it was meant)."""
    model = {**part_config("network", "conv"), "dense_dim": 24}
    preset = {"network": part_config("network", "conv"), "latent_dim": 3, "dense_dim": 24}
    migrated = migrate_hparams(preset)
    assert migrated["network"] == model and "dense_dim" not in migrated
    assert migrated["latent_dim"] == 3 and migrated["prior"] == part_config("prior", "standard")
