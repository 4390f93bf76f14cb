"""The VQ-VAE through the entry points: model=vqvae trains, logs its codebook's perplexity and
usage, and evaluates and samples from its checkpoint alone; model=vqvae_prior trains the gated
PixelCNN on the frozen first stage's code maps, and its checkpoint alone evaluates the bound
-log p(x|z_q) - log p(codes) in bits/dim and samples; combinations that cannot work are refused
in one line, and the first stage's checkpoint is read as data."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY, make_config, run_script
from vae_lightning.config import check_config
from vae_lightning.errors import ConfigError
from vae_lightning.runs import load_checkpoint_model

N_CODES = 16
# shapes: 32x32 images, two stride-2 layers: 8x8 code maps
POSITIONS = 64
BITS = 32 * 32 * math.log(2)
FIRST_STAGE = (*TINY, "model=vqvae", f"model.posterior.n_codes={N_CODES}", "trainer.max_epochs=1")
SECOND_STAGE = (
    *TINY,
    "model=vqvae_prior",
    "model.prior.channels=16",
    "model.prior.n_layers=2",
    "model.optimizer.lr=1e-2",
    "callbacks.pictures=null",
)
EVAL = ("eval.iwae_k=2", "eval.iwae_images=64")


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def succeeded(result) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def first_stage(tmp_path_factory) -> Path:
    """The run dir of a model=vqvae run."""
    run_dir = tmp_path_factory.mktemp("vqvae") / "run"
    succeeded(run_script("train.py", *FIRST_STAGE, f"hydra.run.dir={run_dir}"))
    return run_dir


@pytest.mark.slow
def test_the_first_stage_trains_evaluates_and_samples_from_its_checkpoint(first_stage, tmp_path):
    """Its prior is uniform over the codes: KL = positions * log K exactly, and the bound is the
    reconstruction plus that constant; sample.py decodes uniform codes, and refuses traversals."""
    trained = metrics(first_stage)
    for stage in ("val", "test"):
        assert 1 < trained[f"{stage}/perplexity"] <= N_CODES
        assert 0 < trained[f"{stage}/usage"] <= 1
        assert trained[f"{stage}/perplexity"] <= trained[f"{stage}/usage"] * N_CODES
    assert trained["test/kl"] == pytest.approx(POSITIONS * math.log(N_CODES), rel=1e-6)
    nll = trained["test/recon"] + trained["test/kl"]
    assert trained["test/iwae_nll"] == pytest.approx(nll, rel=1e-5)
    ckpt = first_stage / "checkpoints" / "last.ckpt"
    eval_dir = tmp_path / "eval"
    succeeded(run_script("eval.py", f"ckpt_path={ckpt}", *EVAL, f"hydra.run.dir={eval_dir}"))
    evaluated = metrics(eval_dir)
    assert evaluated["test/iwae_nll"] == pytest.approx(trained["test/iwae_nll"], rel=1e-5)
    assert evaluated["test/iwae_bpd"] == pytest.approx(evaluated["test/iwae_nll"] / BITS)
    succeeded(run_script("sample.py", f"ckpt_path={ckpt}", "n=8", f"out={tmp_path}"))
    assert (tmp_path / "prior.png").is_file()
    refused = run_script("sample.py", f"ckpt_path={ckpt}", "mode=traverse", f"out={tmp_path}")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: mode='traverse' is not allowed: prior, reconstruct or interpolate: a VQ-VAE's "
        "code map has no dimension to sweep"
    ]
    refused = run_script("sample.py", f"ckpt_path={ckpt}", "sampler=gmm", f"out={tmp_path}")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: sampler='gmm' is not allowed: prior: a VQ-VAE draws its code maps from its prior "
        "(model=vqvae_prior)"
    ]


@pytest.mark.slow
def test_the_learned_prior_trains_on_the_frozen_first_stage(first_stage, tmp_path):
    """The second stage keeps the first's weights and codebook, beats the uniform prior on the
    codes, and its checkpoint alone gives the bound: the reconstruction plus -log p(codes) under
    the PixelCNN, in bits/dim; sample.py draws codes from the PixelCNN and decodes them, and
    resume= goes on without the first stage's file."""
    first_ckpt = first_stage / "checkpoints" / "last.ckpt"
    moved = Path(shutil.copy(first_ckpt, tmp_path / "first.ckpt"))
    run_dir = tmp_path / "run"
    succeeded(
        run_script(
            "train.py", *SECOND_STAGE, f"model.first_stage={moved}", f"hydra.run.dir={run_dir}"
        )
    )
    first, trained = metrics(first_stage), metrics(run_dir)
    assert trained["test/recon"] == pytest.approx(first["test/recon"], rel=1e-6)
    assert trained["test/kl"] < first["test/kl"]  # the learned prior beats the uniform one
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    first_model, model = load_checkpoint_model(str(first_ckpt)), load_checkpoint_model(str(ckpt))
    for name in ("network", "posterior", "likelihood"):
        for key, value in getattr(first_model, name).state_dict().items():
            assert torch.equal(getattr(model, name).state_dict()[key], value), f"{name}.{key}"
    x = torch.rand(4, 1, 32, 32).bernoulli()
    codes = model.posterior.codes(model.network.encode(x))
    with torch.no_grad():
        torch.testing.assert_close(model.elbo_terms(x).kl, -model.prior.log_prob(codes))

    eval_dir = tmp_path / "eval"
    succeeded(run_script("eval.py", f"ckpt_path={ckpt}", *EVAL, f"hydra.run.dir={eval_dir}"))
    evaluated = metrics(eval_dir)
    assert evaluated["test/iwae_nll"] == pytest.approx(trained["test/iwae_nll"], rel=1e-5)
    assert evaluated["test/iwae_nll"] == pytest.approx(
        trained["test/recon"] + trained["test/kl"], rel=1e-5
    )
    assert evaluated["test/iwae_bpd"] == pytest.approx(evaluated["test/iwae_nll"] / BITS)
    succeeded(run_script("sample.py", f"ckpt_path={ckpt}", "n=4", f"out={tmp_path}"))
    assert (tmp_path / "prior.png").is_file()

    moved.unlink()
    steps = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    succeeded(run_script("train.py", f"resume={run_dir}", "trainer.max_epochs=3"))
    resumed = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert resumed["global_step"] == steps * 3 // 2
    for key, value in first_model.state_dict().items():
        if not key.startswith("prior."):
            assert torch.equal(resumed["state_dict"][key], value), key


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model=vqvae", "model.prior=vamp"], "model.prior"),
        (["model=vqvae", "model/objective=iwae"], "model.objective"),
        (["model=vqvae", "model/objective=mmd"], "model.objective"),
        (["model=vqvae", "model.network=conv"], "model.network"),
        (["model=conv", "model.posterior=vq"], "model.network"),
        (["model=conv", "model.prior=pixelcnn"], "model.prior"),
        (["model=vqvae_prior"], "model.first_stage"),
        (["model=vqvae", "+model.first_stage=first.ckpt"], "model.first_stage"),
    ],
)
def test_combinations_that_cannot_work_are_refused(tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + "="):
        check_config(make_config(tmp_path, *overrides))


def first_stage_file(path: Path, posterior: str, network: str) -> Path:
    """A checkpoint's metadata as train.py saves it, naming the given targets."""
    parts = {"posterior": {"_target_": posterior}, "network": {"_target_": network}}
    torch.save({"hyper_parameters": {**parts, "latent_dim": 4}}, path)
    return path


VQ = "vae_lightning.posteriors.vector_quantizer.VectorQuantizer"
CONV_MAP = "vae_lightning.networks.conv_map.ConvMapNetwork"


@pytest.mark.parametrize(
    ("posterior", "network", "refusal"),
    [
        ("vae_lightning.posteriors.gaussian.DiagonalGaussian", CONV_MAP, "it has no codebook"),
        (VQ, "builtins.exec", "model.network._target_='builtins.exec' is not allowed"),
    ],
    ids=["not a VQ-VAE", "names code"],
)
def test_a_first_stage_that_is_not_a_vq_checkpoint_is_refused_in_one_line(
    tmp_path, posterior, network, refusal
):
    ckpt = first_stage_file(tmp_path / "first.ckpt", posterior, network)
    run_dir = tmp_path / "run"
    result = run_script(
        "train.py", *SECOND_STAGE, f"model.first_stage={ckpt}", f"hydra.run.dir={run_dir}"
    )
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and refusal in line, line
    assert not run_dir.exists()
