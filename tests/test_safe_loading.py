"""Loading a checkpoint, a Hub folder or a run's saved data config runs no code the file names:
a `_target_` outside the project's parts (and torch's optimisers and schedulers) is refused in
one line naming the key, before anything is called."""

import json
import re
from pathlib import Path

import lightning
import pytest
import torch
import yaml

from tests.helpers import part, run_script
from vae_lightning.errors import ConfigError
from vae_lightning.module import VAE
from vae_lightning.runs import load_checkpoint_model, run_data_config


def payloads(marker: Path) -> dict[str, dict]:
    """Configs that each would write `marker` when Hydra instantiates them. Hydra's own blocklist
    stops os.system, exec and subprocess.run with a traceback; the others wrote the marker on
    loading before registry.py."""
    return {
        "torch.save": {"_target_": "torch.save", "obj": "written", "f": str(marker)},
        "os.system": {"_target_": "os.system", "_args_": [f"touch '{marker}'"]},
        "builtins.exec": {"_target_": "builtins.exec", "_args_": [f"open({str(marker)!r}, 'w')"]},
        "subprocess.run": {"_target_": "subprocess.run", "_args_": [["touch", str(marker)]]},
        "pathlib.Path.write_text": {
            "_target_": "pathlib.Path.write_text",
            "_args_": [{"_target_": "pathlib.Path", "_args_": [str(marker)]}, "written"],
        },
        # a name inside the project's package that reaches torch.save through an import
        "through a project module": {
            "_target_": "vae_lightning.objectives.base.torch.save",
            "obj": "written",
            "f": str(marker),
        },
    }


PAYLOADS = list(payloads(Path("marker")))


def tiny_vae() -> VAE:
    return VAE((1, 8, 8), network=part("network", "mlp", hidden_dims=[4]), latent_dim=2)


def crafted_checkpoint(path: Path, **hparams) -> Path:
    """A checkpoint as train.py writes one, with some arguments of VAE(...) replaced."""
    model = tiny_vae()
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": {**model.hparams, **hparams},
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    return path


def crafted_hub_folder(folder: Path, **config) -> Path:
    tiny_vae().save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**saved, **config}))
    return folder


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_checkpoint_naming_a_callable_is_refused_and_nothing_runs(tmp_path, payload):
    marker = tmp_path / "marker"
    ckpt = crafted_checkpoint(tmp_path / "crafted.ckpt", objective=payloads(marker)[payload])
    with pytest.raises(ConfigError, match=r"^model\.objective\._target_='.*' is not allowed: "):
        VAE.load_from_checkpoint(ckpt)
    # what eval.py, sample.py and export.py load with: the same error, not "a damaged file"
    with pytest.raises(ConfigError, match=r"^model\.objective\._target_="):
        load_checkpoint_model(str(ckpt))
    assert not marker.exists()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_hub_folder_naming_a_callable_is_refused_and_nothing_runs(tmp_path, payload):
    marker = tmp_path / "marker"
    folder = crafted_hub_folder(tmp_path / "hub", objective=payloads(marker)[payload])
    with pytest.raises(ConfigError, match=r"^model\.objective\._target_='.*' is not allowed: "):
        VAE.from_pretrained(folder)
    assert not marker.exists()


def test_optimiser_and_scheduler_from_a_file_are_torch_s_alone(tmp_path):
    """They run only when a loaded model trains, but are refused on loading all the same."""
    marker = tmp_path / "marker"
    torch_save = payloads(marker)["torch.save"]
    adam = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
    cosine = {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "_partial_": True}
    cases = [
        ("model.optimizer._target_", {"optimizer": torch_save}),
        ("model.scheduler.scheduler._target_", {"scheduler": {"scheduler": torch_save}}),
        # nested: Hydra would build the argument before the scheduler
        (
            "model.scheduler.scheduler.T_max._target_",
            {"scheduler": {"scheduler": {**cosine, "T_max": torch_save}}},
        ),
        # a part of the project, where an optimiser belongs
        ("model.optimizer._target_", {"optimizer": {"_target_": "vae_lightning.objectives.ELBO"}}),
        ("model.network._target_", {"network": torch_save}),
    ]
    for key, hparams in cases:
        with pytest.raises(ConfigError, match=f"^{re.escape(key)}="):
            VAE.load_from_checkpoint(crafted_checkpoint(tmp_path / "crafted.ckpt", **hparams))
    # the project's parts and torch's optimisers and schedulers still load
    allowed = {
        "objective": {"_target_": "vae_lightning.objectives.IWAE", "k": 2},
        "optimizer": adam,
        "scheduler": {"scheduler": {**cosine, "T_max": 3}, "interval": "epoch"},
    }
    model = VAE.load_from_checkpoint(crafted_checkpoint(tmp_path / "fine.ckpt", **allowed))
    assert type(model.objective).__name__ == "IWAE"
    assert not marker.exists()


def test_an_hparams_file_and_a_file_object_are_checked_too(tmp_path):
    marker = tmp_path / "marker"
    torch_save = payloads(marker)["torch.save"]
    fine = crafted_checkpoint(tmp_path / "fine.ckpt")
    hparams_file = tmp_path / "hparams.yaml"
    arguments = {"image_shape": [1, 8, 8], "network": "mlp", "latent_dim": 2, "hidden_dims": [4]}
    hparams_file.write_text(yaml.safe_dump({**arguments, "objective": torch_save}))
    with pytest.raises(ConfigError, match=r"^model\.objective\._target_='torch\.save'"):
        VAE.load_from_checkpoint(fine, hparams_file=hparams_file)
    crafted = crafted_checkpoint(tmp_path / "crafted.ckpt", objective=torch_save)
    with crafted.open("rb") as file, pytest.raises(ConfigError, match=r"^model\.objective\."):
        VAE.load_from_checkpoint(file)
    assert not marker.exists()
    with fine.open("rb") as file:  # read for the check, then by Lightning from the same place
        assert VAE.load_from_checkpoint(file).image_shape == (1, 8, 8)


def test_a_run_s_saved_data_config_naming_a_callable_is_refused(tmp_path):
    marker = tmp_path / "marker"
    run_dir = tmp_path / "run"
    for folder in ("checkpoints", ".hydra"):
        (run_dir / folder).mkdir(parents=True)
    ckpt = crafted_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    saved = {"data": payloads(marker)["subprocess.run"], "paths": {"root_dir": str(tmp_path)}}
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(
        ConfigError, match=r"^data\._target_='subprocess\.run' is not allowed: "
    ) as refused:
        run_data_config(ckpt, "eval.py")
    assert str(refused.value).endswith("or name the data, e.g. data=shapes")
    assert not marker.exists()


@pytest.mark.slow
def test_the_scripts_refuse_a_crafted_checkpoint_with_exit_2(tmp_path):
    marker = tmp_path / "marker"
    ckpt = crafted_checkpoint(tmp_path / "crafted.ckpt", objective=payloads(marker)["torch.save"])
    out = tmp_path / "out"  # sample.py's and export.py's; eval.py's is Hydra's run directory
    for script, *args in (
        ("eval.py", "data=shapes", f"hydra.run.dir={tmp_path / 'eval'}"),
        ("sample.py", f"out={out}"),
        ("export.py", f"out={out}"),
    ):
        result = run_script(script, f"ckpt_path={ckpt}", *args)
        assert result.returncode == 2, result.stderr[-3000:]
        lines = result.stderr.strip().splitlines()
        assert (
            len(lines) == 1 and "model.objective._target_='torch.save' is not allowed" in lines[0]
        )
        assert not marker.exists()
    assert not out.exists()
