"""Write the legacy fixtures of tests/test_legacy.py: checkpoints and a Hub folder of the code as it
was before the model was split into parts, with the numbers and pixels that code gave.

The files here were made at main's commit 4abf14f (the layout with one flat `VAE` constructor),
with `.venv/bin/python tests/data/legacy/make_fixtures.py` from the repository root: each model is
trained by train.py at tiny sizes on the shapes data (nothing to download), its last.ckpt copied
here, conv's exported by export.py (config.json and model.safetensors kept), and expected.json
records what eval.py, sample.py and VAE.from_pretrained give with them. Do not rerun it on newer
code: the point of the fixtures is that they are of the old code.
"""

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vae_lightning.module import VAE

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

# The data every fixture was trained on and is evaluated on (data.cache_dir is added per run).
DATA = ["data=shapes", "data.size=256", "data.image_size=16", "data.batch_size=32"]
# eval.py's settings of the recorded metrics, and sample.py's of the recorded picture.
EVAL = ["seed=0", "eval.iwae_k=4", "eval.iwae_images=16"]
SAMPLE = ["mode=prior", "n=16", "seed=0"]
HUB_SAMPLES, HUB_SEED = 16, 0
TINY_MODEL = ["model.hidden_dims=[8,16]", "model.dense_dim=32", "model.latent_dim=4"]
FIXTURES = {
    # the conv network with an objective that has weights of its own (FactorVAE's discriminator)
    "conv": [
        *TINY_MODEL,
        "model.objective=factor",
        "model.objective.discriminator_hidden=8",
        "model.objective.discriminator_layers=2",
    ],
    "mlp": ["model=mlp", *TINY_MODEL, "model.likelihood=gaussian_learned"],
    "hierarchical": [
        "model=hierarchical",
        "model.n_layers=2",
        *TINY_MODEL,
        "model.hidden_dims=[8,8]",
    ],
    "vamp": [
        *TINY_MODEL,
        "model.prior=vamp",
        "model.n_pseudo_inputs=8",
        "model.likelihood=gaussian",
        "model/scheduler=cosine",
    ],
}
TRAIN = [
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger=csv",
    "eval.iwae_k=4",
    "eval.iwae_images=16",
    "callbacks.pictures.image_grids.n_images=8",
    "callbacks.pictures.image_grids.n_samples=16",
]
# What changes from run to run, or names this machine: not compared.
NOT_COMPARED = ("checkpoint", "wall_time_s")


def run(*args: str) -> None:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(result.stderr[-3000:])


def pixels_sha256(png: Path) -> str:
    """Of the decoded pixels, not of the file: another PNG encoder gives the same hash."""
    return hashlib.sha256(np.asarray(Image.open(png)).tobytes()).hexdigest()


def quantized_sha256(images: torch.Tensor) -> str:
    """Of images in [0, 1] as 8-bit pixels, rounded as torchvision's save_image does."""
    pixels = images.mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    return hashlib.sha256(pixels.numpy().tobytes()).hexdigest()


def relative_paths(value, tmp: str):
    """The checkpoint with the temporary run directory cut out of its strings (the
    ModelCheckpoint state holds its paths): no path of this machine is committed."""
    if isinstance(value, dict):
        return {relative_paths(k, tmp): relative_paths(v, tmp) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(relative_paths(item, tmp) for item in value)
    if isinstance(value, str) and tmp in value:
        return value.replace(tmp + "/", "").replace(tmp, ".")
    return value


def main() -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    expected = {"commit": commit, "data": DATA, "eval": EVAL, "sample": SAMPLE, "checkpoints": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        data = [*DATA, f"data.cache_dir={tmp_dir / 'cache'}"]
        for name, overrides in FIXTURES.items():
            run_dir = tmp_dir / name
            run("train.py", *data, *TRAIN, *overrides, f"hydra.run.dir={run_dir}")
            ckpt = HERE / f"{name}.ckpt"
            saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
            torch.save(relative_paths(saved, str(run_dir)), ckpt)
            eval_dir = tmp_dir / f"eval-{name}"
            run("eval.py", f"ckpt_path={ckpt}", *data, *EVAL, f"hydra.run.dir={eval_dir}")
            metrics = json.loads((eval_dir / "metrics.json").read_text())
            run("sample.py", f"ckpt_path={ckpt}", *SAMPLE, f"out={tmp_dir / name}-samples")
            expected["checkpoints"][name] = {
                "overrides": overrides,
                "metrics": {k: v for k, v in metrics.items() if k not in NOT_COMPARED},
                "prior_png_pixels_sha256": pixels_sha256(tmp_dir / f"{name}-samples/prior.png"),
            }
        export_dir = tmp_dir / "hub"
        run("export.py", f"ckpt_path={tmp_dir / 'conv/checkpoints/last.ckpt'}", f"out={export_dir}")
        hub = HERE / "hub"
        hub.mkdir(exist_ok=True)
        for file in ("config.json", "model.safetensors"):  # what from_pretrained reads
            shutil.copy(export_dir / file, hub / file)
    model = VAE.from_pretrained(hub).eval()
    with torch.no_grad():
        samples = model.sample(HUB_SAMPLES, torch.Generator().manual_seed(HUB_SEED))
    expected["hub"] = {
        "n": HUB_SAMPLES,
        "seed": HUB_SEED,
        "samples_sha256": quantized_sha256(samples),
        "samples_mean": samples.double().mean().item(),
    }
    (HERE / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")


if __name__ == "__main__":
    main()
