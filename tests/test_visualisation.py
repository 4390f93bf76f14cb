"""A tiny run of train.py read back: console output, TensorBoard images and hparams, the PNGs, then
sample.py on its checkpoint; and a W&B offline run read back with wandb's own reader."""

import json
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from PIL import Image
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from tests.helpers import ROOT, TINY, read_tensorboard, run_script
from vae_lightning.cli import train
from vae_lightning.errors import ConfigError
from vae_lightning.sampling import sample

pytestmark = pytest.mark.slow

PICTURES = ["reconstructions", "samples", "traversals", "interpolations", "latent_map"]
PICTURES += ["kl_per_dim"]
# Epochs 0, 1, 2; each picture at its interval and once more at the end unless already drawn then.
DRAWN_IN_EPOCHS = {
    "reconstructions": [0, 1, 2],
    "samples": [0, 1, 2],
    "traversals": [1, 2],  # every 2, set below
    "interpolations": [0, 1, 2],
    "latent_map": [1, 2],  # every 2, set below
    "kl_per_dim": [2],  # every 5 (the default): only at the end
}
STEPS_PER_EPOCH = 8  # 256 training images / 32 in the run of train.py
IMAGE = 32  # pixels per side of TINY's images


def side(n: int) -> int:
    """Pixels along n images of a grid, 1 pixel of padding around each."""
    return n * (IMAGE + 1) + 1


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """train.py as a user starts it, output to a pipe (not a terminal), console output on."""
    run_dir = tmp_path_factory.mktemp("run")
    result = run_script(
        "train.py",
        *TINY,
        "data.size=320",
        "trainer.max_epochs=3",
        "trainer.enable_progress_bar=true",
        "trainer.enable_model_summary=true",
        "callbacks.pictures.latent_traversals.every_n_epochs=2",
        "callbacks.pictures.latent_map.every_n_epochs=2",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def test_plain_console_output_has_one_line_per_epoch_and_the_model_summary(run):
    _, result = run
    output = result.stdout + result.stderr
    epoch_lines = [line for line in output.splitlines() if " - epoch " in line]
    assert [line.split(" - ")[1].split()[1] for line in epoch_lines] == ["0/2", "1/2", "2/2"]
    assert all("val/loss=" in line and "train/loss=" in line for line in epoch_lines)
    assert "Trainable params" in output  # the model summary
    assert "it/s" not in output and len(output.splitlines()) < 150  # no live bar in the log


def test_tensorboard_holds_curves_every_picture_and_hparams_with_final_metrics(run):
    run_dir, _ = run
    events = read_tensorboard(run_dir / "tensorboard")
    scalars = set(events.Tags()["scalars"])
    for stage in ("train", "val", "test"):
        assert {f"{stage}/{term}" for term in ("loss", "recon", "kl", "elbo")} <= scalars
    assert set(events.Tags()["images"]) == {f"images/{name}" for name in PICTURES}
    for name, epochs in DRAWN_IN_EPOCHS.items():
        logged = events.Images(f"images/{name}")
        assert [image.step for image in logged] == [(e + 1) * STEPS_PER_EPOCH for e in epochs]
    last = {name: events.Images(f"images/{name}")[-1] for name in PICTURES}
    assert (last["samples"].width, last["samples"].height) == (side(8), side(2))  # 16 samples
    assert (last["traversals"].width, last["traversals"].height) == (side(9), side(4))  # 4 dims
    assert (last["interpolations"].width, last["interpolations"].height) == (side(10), side(4))

    pngs = {p.name for p in (run_dir / "images").iterdir()}
    assert pngs == {
        f"{n}_epoch_{e:03d}.png" for n, epochs in DRAWN_IN_EPOCHS.items() for e in epochs
    }

    metrics = json.loads((run_dir / "metrics.json").read_text())
    plugin = events.PluginTagToContent("hparams")
    experiment = HParamsPluginData.FromString(plugin["_hparams_/experiment"]).experiment
    metric_names = {info.name.tag for info in experiment.metric_infos}
    assert {"test/loss", "test/recon", "test/kl", "test/elbo", "best_val/loss"} <= metric_names
    start = HParamsPluginData.FromString(plugin["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["model/beta"].number_value == 1 and hparams["model/latent_dim"].number_value == 4
    assert hparams["data/size"].number_value == 320
    for name in metric_names:  # the values the HPARAMS view shows are the final ones
        assert events.Scalars(name)[-1].value == pytest.approx(metrics[name], rel=1e-6)


def compose_sample(*overrides: str):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("sample", overrides=list(overrides))


@pytest.mark.parametrize(
    ("mode", "n", "sizes"),
    [
        ("prior", 10, {"prior": (side(8), side(2))}),
        ("reconstruct", 6, {"reconstruct": (side(8), side(2))}),  # 6 pairs, 8 images to a row
        ("interpolate", 3, {"interpolate": (side(5 + 2), side(3))}),  # ends + 5 steps
        ("traverse", 2, {"traverse_000": (side(5), side(4)), "traverse_001": (side(5), side(4))}),
    ],
)
def test_sample_writes_grids_of_the_expected_size(run, tmp_path, mode, n, sizes):
    run_dir, _ = run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    paths = sample(
        compose_sample(f"ckpt_path={ckpt}", f"mode={mode}", f"n={n}", "steps=5", f"out={tmp_path}")
    )
    assert {p.stem: Image.open(p).size for p in paths} == sizes
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{s}.png" for s in sizes)
    pixels = Image.open(paths[0]).convert("L").getextrema()
    assert pixels[0] < pixels[1]  # not a blank grid


def test_sample_writes_next_to_the_run_by_default(run):
    run_dir, _ = run
    (path,) = sample(compose_sample(f"ckpt_path={run_dir}/checkpoints/last.ckpt"))
    assert path == run_dir / "samples" / "prior.png"
    assert Image.open(path).size == (side(8), side(8))  # n=64


def test_sample_py_names_each_file_it_writes_and_never_overwrites_one(run, tmp_path):
    run_dir, _ = run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    printed = []
    for _ in range(2):  # the same command twice: a second file, not the first one replaced
        result = run_script("sample.py", f"ckpt_path={ckpt}", "n=8", f"out={tmp_path}")
        assert result.returncode == 0, result.stderr[-3000:]
        printed += [line for line in result.stdout.splitlines() if line.startswith("wrote ")]
    assert printed == [f"wrote {tmp_path / 'prior.png'}", f"wrote {tmp_path / 'prior_1.png'}"]
    assert all(Path(line.removeprefix("wrote ")).is_file() for line in printed)
    # the files of one call share the first suffix that all of them have free
    for _ in range(2):
        sample(compose_sample(f"ckpt_path={ckpt}", "mode=traverse", "n=2", f"out={tmp_path}"))
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "prior.png",
        "prior_1.png",
        "traverse_000.png",
        "traverse_000_1.png",
        "traverse_001.png",
        "traverse_001_1.png",
    ]


def test_sample_py_refuses_a_missing_checkpoint_in_one_line(tmp_path):
    result = run_script("sample.py", f"ckpt_path={tmp_path}/missing.ckpt", f"out={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: ckpt_path='{tmp_path}/missing.ckpt' is not allowed: no such file; a checkpoint "
        "of train.py, e.g. ckpt_path=<run dir>/checkpoints/last.ckpt"
    ]
    assert list(tmp_path.iterdir()) == []


def test_sample_refuses_other_files_and_runs_without_a_saved_config(run, tmp_path):
    run_dir, _ = run
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("hello")
    with pytest.raises(ConfigError, match=r"ckpt_path=.*notes.ckpt.*on loading"):
        sample(compose_sample(f"ckpt_path={not_a_checkpoint}"))
    alone = tmp_path / "last.ckpt"  # a checkpoint copied out of its run
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", alone)
    with pytest.raises(ConfigError, match=r"mode=reconstruct needs the run's data"):
        sample(compose_sample(f"ckpt_path={alone}", "mode=reconstruct"))
    with pytest.raises(ConfigError, match=r"mode='sideways' is not allowed: one of prior"):
        sample(compose_sample(f"ckpt_path={alone}", "mode=sideways"))


def test_wandb_offline_run_holds_history_media_config_and_final_summary(
    tmp_path, tiny_config, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    metrics = train(tiny_config("logger=wandb", "trainer.max_epochs=1"))
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")

    # wandb's own reader of the run's transaction log, one JSON record per line
    result = run_script("-m", "wandb", "leet", "inspect", "--json", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    losses = [item["train/loss"] for item in history if "train/loss" in item]
    assert len(losses) == 16  # 512 training images / 32
    media = {}  # each picture logged once, its file in the run's media folder
    for name in PICTURES:
        (files,) = [
            item[f"images/{name}.filenames"]
            for item in history
            if f"images/{name}.filenames" in item
        ]
        media[name] = run_dir / "files" / files[0]
    assert all(path.is_file() for path in media.values())
    assert Image.open(media["samples"]).size == (side(8), side(2))
    summary, config = {}, {}
    for record in records:
        summary.update(record.get("summary", {}).get("update", {}))
        config.update(record.get("config", {}).get("update", {}))
    for name in ("test/loss", "test/elbo", "best_val/loss", "epochs", "steps"):
        assert summary[name] == pytest.approx(metrics[name], rel=1e-6)
    assert config["model"]["beta"] == 1 and config["data"]["size"] == 640
