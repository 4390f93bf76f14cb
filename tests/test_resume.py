"""Exact resume: a run killed again and again (mid-epoch, during validation, right after an
epoch end) and resumed ends with the same weights, optimiser state, logged values and pictures as
one never interrupted, for the conv model, the VQ-VAE (its codebook's EMA buffers included), the
MLP with dynamic binarisation on semi-supervised data (labelled and unlabelled images mixed in
every batch), M2 on the same data, and per-item decoding; under DDP at the right step.
Checkpoints are written whole or not at all; a damaged last.ckpt is passed over for the newest
intact checkpoint, and eval.py and sample.py name it."""

import errno
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Checkpoint

from tests.helpers import FASHION_MNIST_SUBSET, TINY, make_config, read_tensorboard, run_script
from tests.test_data_real import write_digit_pngs
from vae_lightning.callbacks import Pictures
from vae_lightning.cli import train
from vae_lightning.reliability import AtomicCheckpointIO, CheckpointNotWritten, random_states

# 256 training images in batches of 32: 8 steps per epoch, 16 in all, last.ckpt every 3 steps.
# Every run has the killer callback; it kills only the process whose environment names a moment.
RUN = (
    *TINY,
    "data.size=320",
    "trainer.max_epochs=2",
    "callbacks.step_checkpoint.every_n_train_steps=3",
    f"+callbacks.killer._target_={__name__}.KillAt",
)
STEPS_PER_EPOCH, STEPS = 8, 16
KILL_AT = "VAE_TEST_SIGKILL_AT"


class KillAt(Checkpoint):
    """SIGKILLs its own process at the moment $VAE_TEST_SIGKILL_AT names, with nothing run on the
    way out: "step N" as training step N starts, "saved N" as the step that makes global_step N
    ends, right after the checkpoint callbacks saved it and before Lightning logs the step's
    values, "validation E" at epoch E's first validation batch, "epoch start E" as epoch E
    starts, right after the previous one ended and its checkpoint was saved, "epoch end E" as
    epoch E ends, right after its checkpoint was saved and before Lightning logs its values.

    A Checkpoint only for its place: Lightning runs checkpoint callbacks after the others, in
    their configured order, so its on_train_batch_end runs after the ModelCheckpoints' saves."""

    def kill_at(self, moment: str) -> None:
        if os.environ.get(KILL_AT) == moment:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.kill_at(f"step {trainer.global_step}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.kill_at(f"saved {trainer.global_step}")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.kill_at(f"validation {trainer.current_epoch}")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.kill_at(f"epoch end {trainer.current_epoch}")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.kill_at(f"epoch start {trainer.current_epoch}")


def train_py(kill_at: str | None, *overrides: str):
    env = {k: v for k, v in os.environ.items() if k != KILL_AT}
    if kill_at is not None:
        env[KILL_AT] = kill_at
    return run_script("train.py", *overrides, env=env)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    events = read_tensorboard(run_dir / "tensorboard")
    return [(event.step, event.value) for event in events.Scalars(tag)]


def assert_same_state(a, b, where: str = "") -> None:
    """Nested dicts, lists and tensors, equal exactly (tensors by torch.equal)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def assert_same_as_uninterrupted(run_dir: Path, baseline: Path) -> None:
    resumed = load(run_dir / "checkpoints" / "last.ckpt")
    uninterrupted = load(baseline / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == uninterrupted["global_step"] == STEPS
    assert_same_state(resumed["state_dict"], uninterrupted["state_dict"], "state_dict")
    assert_same_state(resumed["optimizer_states"], uninterrupted["optimizer_states"], "optim")
    for tag in ("train/loss", "val/loss"):
        assert scalars(run_dir, tag) == scalars(baseline, tag), tag  # exactly, step by step
    assert [step for step, _ in scalars(run_dir, "train/loss")] == list(range(STEPS))


# The codebook's EMA buffers and its dead-code restarts (at random encoder outputs) resume too.
VQVAE = ("model=vqvae", "model.posterior.n_codes=16")


def variants(data: Path, cache: Path) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """The overrides of each kind of run on top of RUN (the conv model on shapes in memory), with
    its data caches in `cache`, and those of the uninterrupted run it must equal (caches in
    data/cache, written from the source). All have 256 training images: 8 steps an epoch. A
    per-item run must equal one in memory: the same images, in the same order. The MLP's run is
    semi-supervised (data.labelled): its batches mix labelled and unlabelled images; M2 trains
    on the same batches."""

    def fashion(cache: Path, *model: str) -> tuple[str, ...]:
        data_set = ("data=fashion_mnist", f"data.root={FASHION_MNIST_SUBSET}", "data.size=256")
        # 32 labels: each batch of 32 holds 4 labelled images and 28 of the 224 unlabelled ones
        labelled = "data.labelled=32"
        return (*data_set, f"data.cache_dir={cache}", "data.binarize=dynamic", labelled, *model)

    mlp = ("model=mlp", "model.network.hidden_dims=[32]")
    # M2: the conditional VAE with its classifier q(y|x), which reads the labelled images' classes
    m2 = ("model=m2", "model.objective.classifier_hidden_dims=[16]")

    def folder(cache: Path, in_memory: bool) -> tuple[str, ...]:
        data_set = ("data=folder", f"data.root={data / 'digits'}", "data.size=256")
        images = ("data.image_size=16", "data.channels=1", "data.num_workers=2")
        return (*data_set, f"data.cache_dir={cache}", *images, f"data.in_memory={in_memory}")

    return {
        "conv": ((), ()),
        "mlp, dynamic binarisation": (fashion(cache, *mlp), fashion(data / "cache", *mlp)),
        "m2": (fashion(cache, *m2), fashion(data / "cache", *m2)),
        "per-item decoding": (folder(cache, False), folder(data / "cache", True)),
        "vqvae": (VQVAE, VQVAE),
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A folder of 318 real digits (train: 257, val: 28, test: 32) and a cache folder."""
    data = tmp_path_factory.mktemp("data")
    write_digit_pngs(data / "digits", per_class=106)
    return data


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The run dir of an uninterrupted run with the given overrides on top of RUN, each run once
    for the module, started the same way as the killed ones."""
    runs: dict[tuple[str, ...], Path] = {}

    def run(*overrides: str) -> Path:
        if overrides not in runs:
            run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
            result = train_py(None, *RUN, *overrides, f"hydra.run.dir={run_dir}")
            assert result.returncode == 0, result.stderr[-3000:]
            runs[overrides] = run_dir
        return runs[overrides]

    return run


# ---- resumable data order and random states ---------------------------------------------------

# Each kill with the step of the last checkpoint in place after it: in the middle of epoch 0; as
# the step checkpoint at 6 is saved, before that step's values are logged (in place at once, it
# would resume past a step missing from the history: it is held); during epoch 0's validation;
# as epoch 0's checkpoint at 8 is saved, before Lightning logs the epoch's values (held too);
# right after epoch 0 ended; in the middle of epoch 1.
KILLS = [
    ("step 5", 3),
    ("saved 6", 3),
    ("validation 0", 6),
    ("epoch end 0", 6),
    ("epoch start 1", 8),
    ("step 13", 12),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variant", "kills"),
    [
        ("conv", KILLS),
        ("mlp, dynamic binarisation", KILLS[2:]),
        ("m2", KILLS[2:3]),
        ("per-item decoding", KILLS[2:]),
        ("vqvae", [KILLS[0], KILLS[-1]]),
    ],
    ids=["conv", "mlp, dynamic binarisation", "m2", "per-item decoding", "vqvae"],
)
def test_killed_again_and_again_and_resumed_equals_an_uninterrupted_run(
    tmp_path, data, uninterrupted, variant, kills
):
    """Also: every data cache file truncated after the first kill is rebuilt by the next start
    with one warning, and training goes on with the right images; the pictures are the same."""
    overrides, uninterrupted_overrides = variants(data, tmp_path / "cache")[variant]
    baseline = uninterrupted(*uninterrupted_overrides)  # first: its caches come from the source
    run_dir = tmp_path / "run"
    command = (*RUN, *overrides, f"hydra.run.dir={run_dir}")
    spoiled: list[Path] = []  # cache files truncated before this start
    for i, (kill_at, saved_at) in enumerate(kills):
        killed = train_py(kill_at, *command)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        # Lightning's warning for a loader without state, and ours for a sampler not restored
        assert "not resumable" not in killed.stderr and "not restored" not in killed.stderr
        output = (killed.stdout + killed.stderr).splitlines()
        warned = [line for line in output if "is damaged" in line]
        assert len(warned) == len(spoiled), warned
        for path in spoiled:
            assert any(f"cache file {path} is damaged (" in line for line in warned), path
            load(path)  # rebuilt whole
        last = load(run_dir / "checkpoints" / "last.ckpt")
        assert last["global_step"] == saved_at, kill_at
        assert last["loops"]["fit_loop"]["state_dict"]["combined_loader"]  # the loader's position
        command = (f"resume={run_dir}",)  # the documented command
        spoiled = sorted((tmp_path / "cache").rglob("*.pt")) if i == 0 else []
        for path in spoiled:
            path.write_bytes(path.read_bytes()[:1000])

    resumed = train_py(None, *command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr and "not restored" not in resumed.stderr
    assert_same_as_uninterrupted(run_dir, baseline)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == sorted(
        p.name for p in (baseline / "checkpoints").iterdir()
    )  # no temporary file left by a killed save
    pictures = sorted((run_dir / "images").iterdir())
    assert [p.name for p in pictures] == sorted(p.name for p in (baseline / "images").iterdir())
    for picture in pictures:  # drawn by the killed processes too
        assert picture.read_bytes() == (baseline / "images" / picture.name).read_bytes(), picture


@pytest.mark.slow
def test_ddp_killed_mid_epoch_resumes_at_its_step_and_says_the_order_is_new(tmp_path):
    """Two CPU processes, 4 steps an epoch each. Not identical to an uninterrupted run: the rest of
    the epoch takes a new order, which one warning says; steps, epochs and history are right."""
    run_dir, last = tmp_path / "run", tmp_path / "run" / "checkpoints" / "last.ckpt"
    ddp = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    killed = train_py("step 3", *RUN, *ddp, f"hydra.run.dir={run_dir}")  # both processes
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert load(last)["global_step"] == 3

    resumed = train_py(None, f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    output = (resumed.stdout + resumed.stderr).splitlines()
    warned = [line for line in output if "not restored" in line]
    assert len(warned) == 1 and "DistributedSamplerWrapper" in warned[0], warned
    finished = load(last)
    assert (finished["global_step"], finished["epoch"]) == (8, 1)
    assert [step for step, _ in scalars(run_dir, "train/loss")] == list(range(8))


class PicturesKeepingRandomStates(Pictures):
    """The pictures callback, keeping the global random states before and after each drawing."""

    states: list[tuple[dict, dict]] = []  # of the class: train() makes the instance

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        before = random_states()
        super().on_train_epoch_end(trainer, pl_module)
        self.states.append((before, random_states()))


@pytest.mark.slow
def test_the_pictures_draw_nothing_from_the_random_states_of_training(tmp_path, data):
    """Their draws are fixed (generators of their own, the fixed binarisation of evaluation)."""
    PicturesKeepingRandomStates.states.clear()
    binarised, _ = variants(data, tmp_path / "cache")["mlp, dynamic binarisation"]
    every_epoch = [
        f"callbacks.pictures.{name}.every_n_epochs=1" for name in ("latent_map", "kl_per_dim")
    ]
    pictures = f"callbacks.pictures._target_={__name__}.PicturesKeepingRandomStates"
    train(make_config(tmp_path, *RUN, *binarised, "trainer.max_epochs=1", pictures, *every_epoch))
    drawn = sorted(path.name for path in (tmp_path / "images").iterdir())
    names = [
        "interpolations",
        "kl_per_dim",
        "latent_map",
        "reconstructions",
        "samples",
        "traversals",
    ]
    assert drawn == [f"{name}_epoch_000.png" for name in names]
    ((before, after),) = PicturesKeepingRandomStates.states
    assert_same_state(before, after)


# ---- atomic checkpoints -----------------------------------------------------------------------


def test_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 3, "w": torch.arange(1000)}, path)

    def disk_full(self, checkpoint, file):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(AtomicCheckpointIO, "_write", disk_full)
    with pytest.raises(CheckpointNotWritten) as error:
        io.save_checkpoint({"global_step": 6, "w": torch.zeros(1000)}, path)
    assert str(error.value) == (
        f"could not write the checkpoint {path} (No space left on device): the previous "
        f"last.ckpt is intact; make room and continue with: python train.py resume={tmp_path}"
    )
    saved = load(path)
    assert saved["global_step"] == 3 and torch.equal(saved["w"], torch.arange(1000))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_held_saves_and_removals_change_the_folder_only_once_released(tmp_path):
    folder = tmp_path / "checkpoints"
    last, best, better = folder / "last.ckpt", folder / "epoch_000.ckpt", folder / "epoch_001.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 3}, last)
    io.save_checkpoint({"global_step": 3}, best)
    io.hold()
    ends = ((AtomicCheckpointIO.discard, 3, best), (AtomicCheckpointIO.release, 9, better))
    for end, kept_step, kept_best in ends:
        io.save_checkpoint({"global_step": 6}, last)
        io.save_checkpoint({"global_step": 9}, last)  # supersedes the held 6
        io.save_checkpoint({"global_step": 9}, better)
        io.remove_checkpoint(best)  # as ModelCheckpoint drops the top-k file a better one beats
        assert load(last)["global_step"] == 3 and load(best)["global_step"] == 3
        assert not better.exists() and len(list(folder.glob(".*.ckpt.*.tmp"))) == 2
        end(io)
        assert load(last)["global_step"] == kept_step
        assert sorted(p.name for p in folder.iterdir()) == [kept_best.name, "last.ckpt"]
    io.save_checkpoint({"global_step": 12}, last)  # still holding after a release
    assert load(last)["global_step"] == 9
    io.stop_holding()
    assert load(last)["global_step"] == 12
    io.save_checkpoint({"global_step": 15}, last)
    assert load(last)["global_step"] == 15


class DiskFullAtTheSecondSave(AtomicCheckpointIO):
    """Checkpoints whose second write (the step checkpoint at step 6) runs out of disk halfway."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def _write(self, checkpoint, file) -> None:
        self.writes += 1
        if self.writes == 2:
            file.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        super()._write(checkpoint, file)


@pytest.mark.slow
def test_disk_full_during_a_training_save_keeps_the_last_good_checkpoint(tmp_path):
    """train.py with its Trainer's checkpoint plugin failing as a full disk would: one line, the
    run stops, last.ckpt is still the one of step 3, and resume= goes on from it."""
    plugin = f"trainer.plugins=[{{_target_:{__name__}.DiskFullAtTheSecondSave}}]"
    failed = train_py(None, *RUN, plugin, f"hydra.run.dir={tmp_path}")
    assert failed.returncode == 1, failed.stderr[-3000:]
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert failed.stderr.strip().splitlines()[-1] == (
        f"error: could not write the checkpoint {last} (No space left on device): the previous "
        f"last.ckpt is intact; make room and continue with: python train.py resume={tmp_path}"
    )
    assert "Traceback" not in failed.stderr
    assert load(last)["global_step"] == 3
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]

    default_plugin = "trainer.plugins=[{_target_:vae_lightning.reliability.AtomicCheckpointIO}]"
    resumed = train_py(None, f"resume={tmp_path}", default_plugin)  # the room made
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load(last)["global_step"] == STEPS


# ---- a damaged last.ckpt ----------------------------------------------------------------------


def spoil(path: Path, damage: str) -> None:
    if damage == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_text("not a checkpoint")


@pytest.fixture(scope="module")
def killed_at_step_10(tmp_path_factory) -> Path:
    """A run killed past epoch_000.ckpt (step 8) and last.ckpt (step 9)."""
    run_dir = tmp_path_factory.mktemp("killed") / "run"
    killed = train_py("step 10", *RUN, f"hydra.run.dir={run_dir}")
    assert killed.returncode == -signal.SIGKILL
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "not a checkpoint"])
def test_damaged_last_ckpt_resumes_from_the_newest_intact_one(
    tmp_path, killed_at_step_10, uninterrupted, damage
):
    run_dir = tmp_path / "run"
    shutil.copytree(killed_at_step_10, run_dir)
    checkpoints = run_dir / "checkpoints"
    intact, last = checkpoints / "epoch_000.ckpt", checkpoints / "last.ckpt"
    assert load(intact)["global_step"] == 8 and load(last)["global_step"] == 9
    spoil(last, damage)

    resumed = train_py(None, f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    output = (resumed.stdout + resumed.stderr).splitlines()
    warnings = [line for line in output if "damaged" in line and str(last) in line]
    assert len(warnings) == 1 and f"resuming from {intact}" in warnings[0], warnings
    assert_same_as_uninterrupted(run_dir, uninterrupted())  # from an epoch-end checkpoint


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "output", "damage"),
    [("eval.py", "hydra.run.dir", "truncated"), ("sample.py", "out", "not a checkpoint")],
)
def test_eval_and_sample_name_a_damaged_checkpoint_and_an_intact_one_in_one_line(
    tmp_path, uninterrupted, script, output, damage
):
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(uninterrupted() / "checkpoints", checkpoints)
    (intact,) = checkpoints.glob("epoch_*.ckpt")  # the best epoch's
    last = checkpoints / "last.ckpt"
    spoil(last, damage)

    result = run_script(script, f"ckpt_path={last}", f"{output}={tmp_path / 'out'}")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        f"error: ckpt_path='{last}' is not allowed: the file is damaged, truncated or not a "
        "checkpoint ("
    )
    assert line.endswith(f" on loading); the newest intact one beside it is {intact}")
