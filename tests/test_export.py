"""export.py end to end: a tiny trained run written as a folder to share, loaded back by
VAE.from_pretrained alone with the checkpoint's outputs, its model card, and its errors."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from hydra import compose, initialize_config_dir
from PIL import Image
from torchvision.utils import save_image

from tests.helpers import ROOT, TINY, run_script
from vae_lightning.drawing import grid
from vae_lightning.errors import ConfigError
from vae_lightning.export import export, export_checkpoint
from vae_lightning.module import VAE

pytestmark = pytest.mark.slow

N_IMAGES = 16  # 2 rows of samples, 4 of reconstructions


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run of train.py with the TINY settings, 1 epoch."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    result = run_script("train.py", *TINY, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def metric_rows(card: str) -> dict[str, str]:
    """The rows of the card's metrics table: | `name` | value |."""
    return dict(re.findall(r"^\| `([^`]+)` \| ([^`|]+) \|$", card, flags=re.MULTILINE))


def assert_same_model(expected: VAE, loaded: VAE) -> None:
    """The same weights and arguments, so the same outputs of the whole public API."""
    assert not loaded.training
    assert loaded.hparams == json.loads(json.dumps(dict(expected.hparams)))  # tuples as lists
    assert expected.state_dict().keys() == loaded.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in expected.state_dict().items())
    x = torch.rand(6, *expected.image_shape, generator=torch.Generator().manual_seed(1))
    z = torch.randn(6, expected.hparams.latent_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for a, b in zip(expected.encode(x), loaded.encode(x), strict=True):
            assert torch.equal(a, b)
        assert torch.equal(expected.decode(z), loaded.decode(z))
        assert torch.equal(expected.reconstruct(x), loaded.reconstruct(x))
        draws = [m.sample(8, torch.Generator().manual_seed(3)) for m in (expected, loaded)]
        assert torch.equal(*draws)
        weights = []
        for model in (expected, loaded):
            torch.manual_seed(4)
            weights.append(model.log_importance_weights(x, 5))
        for a, b in zip(*weights, strict=True):
            assert torch.equal(a, b)


def test_export_script_writes_a_folder_that_loads_alone(run_dir, tmp_path):
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    out = tmp_path / "shared-vae"
    result = run_script("export.py", f"ckpt_path={ckpt}", f"out={out}", f"n_images={N_IMAGES}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == {
        "model.safetensors",
        "config.json",
        "README.md",
        "samples.png",
        "reconstructions.png",
    }
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert len(set(modes.values())) == 1, modes  # the weights as readable as the rest
    expected = VAE.load_from_checkpoint(ckpt, map_location="cpu").eval()
    assert json.loads((out / "config.json").read_text()) == json.loads(
        json.dumps(dict(expected.hparams))
    )

    # The card: the Hub's front matter, every number of metrics.json, pictures that exist.
    card_text = (out / "README.md").read_text()
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "vae-lightning"
    assert {"vae", "pytorch_model_hub_mixin"} <= set(card.data.tags)
    assert "VAE.from_pretrained(" in card_text and "push_to_hub(" in card_text
    rows = metric_rows(card_text)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float | list)}
    assert "test/iwae_nll" in numbers and "test/kl_per_dim" in numbers
    for name, value in numbers.items():
        shown = json.loads(rows[name])  # 6 significant digits; lists as [a, b, ...]
        assert shown == pytest.approx(value, rel=1e-5), name
    assert str(run_dir) not in card_text  # no paths of this machine in a card to share
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", card_text)
    assert pictures == ["samples.png", "reconstructions.png"]
    sizes = {}
    for picture in pictures:
        with Image.open(out / picture) as image:
            assert image.format == "PNG"
            image.verify()
            sizes[picture] = image.size
    # 8 images to a row, 33 pixels each (32 and a border); reconstructions in pairs
    assert sizes == {"samples.png": (265, 67), "reconstructions.png": (265, 133)}

    # Anywhere else, with nothing but the folder: the checkpoint's model.
    copy = shutil.copytree(out, tmp_path / "elsewhere" / "copy")
    loaded = VAE.from_pretrained(copy)
    assert_same_model(expected, loaded)
    # samples.png is what the card says draws it
    redrawn = tmp_path / "redrawn.png"
    with torch.no_grad():
        save_image(grid(loaded.sample(N_IMAGES, torch.Generator().manual_seed(0)), 8), redrawn)
    with Image.open(copy / "samples.png") as a, Image.open(redrawn) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_a_bad_checkpoint_is_one_line_and_a_failure(tmp_path):
    out = tmp_path / "out"
    result = run_script("export.py", f"ckpt_path={tmp_path / 'nothing.ckpt'}", f"out={out}")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("error: ckpt_path=") and "nothing.ckpt" in result.stderr
    assert not out.exists()


def test_a_bare_checkpoint_and_bad_folders(run_dir, tmp_path):
    """Without metrics.json or the run's config the card says so; an earlier export is
    replaced; a folder that cannot be written, or holds other files, is refused."""
    out = tmp_path / "out"
    export_checkpoint(run_dir / "checkpoints" / "last.ckpt", out, n_images=4)
    assert (out / "reconstructions.png").is_file()
    bare = tmp_path / "bare.ckpt"
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", bare)
    export_checkpoint(bare, out, n_images=4)  # over the first export
    card = (out / "README.md").read_text()
    assert "None: the run's metrics.json was not found" in card
    assert "Not drawn: the run's test images were not found" in card
    assert not (out / "reconstructions.png").exists()  # that of the earlier export is gone
    assert_same_model(
        VAE.load_from_checkpoint(bare, map_location="cpu").eval(), VAE.from_pretrained(out)
    )

    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match=r"out=.*a folder that can be written \(NotADirectory"):
        export_checkpoint(bare, tmp_path / "a_file" / "out")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("")
    with pytest.raises(ConfigError, match=r"out=.*it holds notes.txt"):
        export_checkpoint(bare, tmp_path / "busy")
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        no_ckpt = compose("export", overrides=[f"out={tmp_path / 'new'}"])
    with pytest.raises(ConfigError, match="ckpt_path=None is not allowed: it is required"):
        export(no_ckpt)


def test_from_pretrained_refuses_weights_that_do_not_fit(run_dir, tmp_path):
    """Loading is strict: a config.json that asks for a parameter the file lacks (the VampPrior's
    pseudo-inputs) is an error, not a layer left at its random initialisation."""
    model = VAE.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"prior": "vamp"}))
    with pytest.raises(RuntimeError, match="pseudo_input_logits"):
        VAE.from_pretrained(tmp_path)
