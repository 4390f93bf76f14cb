"""Sweeps end to end: the report, a failing job, the joblib launcher, Optuna, and DDP on CPU."""

import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from omegaconf import open_dict
from PIL import Image

from tests.helpers import ROOT, TINY, read_tensorboard, run_script
from vae_lightning import sweep
from vae_lightning.data import ShapesDataModule


def read_report(sweep_dir):
    with (sweep_dir / "report.csv").open() as file:
        return list(csv.DictReader(file))


def assert_png(path, min_side=100):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= min_side


def hydra_config(*overrides):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


@pytest.fixture
def job_in_hydra(tmp_path):
    """The config of a job as Hydra hands it over, with HydraConfig set as inside the job."""

    def make(mode):
        cfg = hydra_config()
        with open_dict(cfg):
            cfg.hydra.mode = mode
            cfg.hydra.runtime.output_dir = str(tmp_path)
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield make
    HydraConfig.instance().cfg = None  # no Hydra job seen by the tests that follow


@pytest.mark.parametrize("mode", [RunMode.RUN, RunMode.MULTIRUN])
def test_a_failing_job_is_recorded_only_in_a_multirun(tmp_path, job_in_hydra, mode):
    cfg = job_in_hydra(mode)

    @sweep.record_failure_in_multirun
    def job(cfg):
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")

    if mode == RunMode.RUN:
        with pytest.raises(RuntimeError):
            job(cfg)
        assert not (tmp_path / sweep.ERROR_FILE).exists()
    else:
        assert job(cfg) is None
        lines = (tmp_path / sweep.ERROR_FILE).read_text().splitlines()
        assert lines[0] == "RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"
        assert "Traceback" in lines[2]
        # a NaN objective would end an Optuna study: it becomes a failed trial instead
        assert sweep.record_failure_in_multirun(lambda cfg: math.nan)(cfg) is None


def test_launcher_and_search_configs_compose():
    slurm = hydra_config("hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4")
    launcher = slurm.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 1)
    report = slurm.hydra.callbacks.sweep_report
    assert report._target_ == "vae_lightning.hydra_callbacks.SweepReport"
    joblib = hydra_config("hydra/launcher=joblib")
    assert joblib.hydra.launcher._target_.endswith("JoblibLauncher")
    optuna = hydra_config("hparams_search=optuna")
    assert optuna.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert set(optuna.hydra.sweeper.params) == {
        "model.optimizer.lr",
        "model.beta",
        "model.latent_dim",
    }
    assert optuna.hydra.mode == RunMode.MULTIRUN


def test_the_disentanglement_study_sweeps_four_objectives_at_two_strengths_over_three_seeds():
    study = hydra_config("experiment=disentanglement_study")
    arms = study.hydra.sweeper.params.arm.split(",")
    assert study.hydra.sweeper.params.seed == "0,1,2" and len(arms) == 8
    weights = {}
    for arm in arms:
        model = hydra_config("experiment=disentanglement_study", f"arm={arm}").model
        objective = model.objective._target_.rsplit(".", 1)[1]
        weight = {
            "ELBO": model.beta,
            "BetaTC": model.objective.get("beta"),
            "FactorVAE": model.objective.get("gamma"),
            "DIPVAE": model.objective.get("lambda_od"),
        }[objective]
        weights.setdefault(objective, set()).add(weight)
        assert model.objective.get("variant", "ii") == "ii"
    assert weights == {
        "ELBO": {4.0, 8.0},
        "BetaTC": {4.0, 8.0},
        "FactorVAE": {10.0, 35.0},
        "DIPVAE": {1.0, 10.0},
    }


def test_ddp_ranks_get_disjoint_batches_that_cover_the_data():
    """What Lightning does to the train loader under DDP, done for two ranks by hand."""
    data = ShapesDataModule(size=200, val_fraction=0.1, test_fraction=0.1, batch_size=16)
    shards = []
    for rank in (0, 1):
        torch.manual_seed(0)  # as seed_everything does in every process
        sampler = data.train_dataloader().sampler
        wrapped = DistributedSamplerWrapper(sampler, num_replicas=2, rank=rank, shuffle=False)
        shards.append([i for batch in wrapped for i in torch.as_tensor(batch).tolist()])
    assert not set(shards[0]) & set(shards[1])
    assert set(shards[0]) | set(shards[1]) == set(range(160))


@pytest.mark.slow
def test_multirun_in_parallel_reports_every_job_and_failures(tmp_path):
    # latent_dim=0 fails inside each of its two jobs: the sweep goes on and reports them
    result = run_script(
        "train.py", "-m", *TINY, "trainer.max_epochs=1", "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2", "model.beta=0.5,2", "model.latent_dim=4,0",
        f"hydra.sweep.dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    rows = read_report(tmp_path)
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    done = [r for r in rows if "model.latent_dim=0" not in r["overrides"]]
    failed = [r for r in rows if "model.latent_dim=0" in r["overrides"]]
    assert [r["status"] for r in done] == ["ok", "ok"]
    assert [r["status"] for r in failed] == ["failed", "failed"]
    for row in done:
        metrics = json.loads((tmp_path / row["job"] / "metrics.json").read_text())
        assert float(row["test/kl"]) == pytest.approx(metrics["test/kl"])
        assert float(row["test/recon"]) == pytest.approx(metrics["test/recon"])
        assert float(row["wall_time_s"]) > 0 and row["error"] == ""
        assert row["test/iwae_nll"] == "" or math.isfinite(float(row["test/iwae_nll"]))
    for row in failed:
        assert row["error"].startswith("ConfigError: model.latent_dim=0 is not allowed")
        assert row["test/elbo"] == ""
    markdown = (tmp_path / "report.md").read_text()
    assert "| `model.latent_dim=0 model.beta=0.5` |" in markdown
    assert_png(tmp_path / "rate_distortion.png")
    assert_png(tmp_path / "samples.png")

    # rebuilt from the finished directory alone, the same report
    before = (tmp_path / "report.csv").read_text()
    for name in ("report.csv", "report.md", "rate_distortion.png", "samples.png"):
        (tmp_path / name).unlink()
    assert sweep.main([str(tmp_path)]) == 0
    assert (tmp_path / "report.csv").read_text() == before
    assert_png(tmp_path / "samples.png")


@pytest.mark.slow
def test_optuna_search_runs_trials_and_reports_the_best(tmp_path):
    result = run_script(
        "train.py", *(o for o in TINY if not o.startswith("model.latent_dim")),
        "trainer.max_epochs=1", "hparams_search=optuna",
        "hydra.sweeper.n_trials=2", "model.latent_dim=choice(2,4)", f"hydra.sweep.dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    logs = [result.stdout, result.stderr, *(p.read_text() for p in tmp_path.glob("*/train.log"))]
    assert len(logs) == 4 and not [text for text in logs if "\x1b[" in text]  # no colour codes
    assert "setup plugin alembic" not in result.stdout + result.stderr
    assert "A new study created in memory" in result.stdout + result.stderr  # through Hydra's log
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"model.optimizer.lr", "model.beta", "model.latent_dim"}
    rows = read_report(tmp_path)
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    # train.py returns the validation ELBO (optimized_metric), which Optuna maximises
    val_elbo = [
        json.loads((tmp_path / r["job"] / "metrics.json").read_text())["val/elbo"] for r in rows
    ]
    assert best["best_value"] == pytest.approx(max(val_elbo))


@pytest.mark.slow
def test_a_failed_job_finishes_its_wandb_run_and_the_next_job_gets_its_own(tmp_path):
    # job 0 meets a NaN loss at step 2 and fails; job 1 never does (its NaN step is never reached)
    result = run_script(
        "train.py", "-m", *TINY, "trainer.max_epochs=1", "logger=wandb",
        "data._target_=tests.helpers.PoisonedShapes", "+data.nan_step=2,100000",
        f"hydra.sweep.dir={tmp_path}",
        env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "already in progress" not in result.stdout + result.stderr
    assert [r["status"] for r in read_report(tmp_path)] == ["failed", "ok"]
    for job in ("0", "1"):  # each job a W&B run of its own, in its own directory
        runs = list((tmp_path / job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1 and list(runs[0].glob("run-*.wandb")), job


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_and_writes_once(tmp_path):
    result = run_script(
        "train.py", *TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stdout + result.stderr
    assert [p.name for p in tmp_path.rglob("metrics.json")] == ["metrics.json"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 2 * 8  # 512 training images / 32 per batch / 2 ranks, 2 epochs
    assert math.isfinite(metrics["test/elbo"])

    # one logger: every event file from one process, each training step logged once
    event_files = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len({f.name.split(".")[4] for f in event_files}) == 1  # the writer's pid
    events = read_tensorboard(tmp_path / "tensorboard")
    assert [e.step for e in events.Scalars("train/loss")] == list(range(16))
    assert {p.name for p in (tmp_path / "images").iterdir()} >= {
        f"{kind}_epoch_{e:03d}.png" for kind in ("reconstructions", "samples") for e in (0, 1)
    }
    assert not list(tmp_path.rglob("train_ddp_process_*"))  # no directory of rank 1's own


def test_report_reads_metrics_of_other_issues_and_flags_nan_and_killed_jobs(tmp_path):
    """Job directories as train.py leaves them: evaluation metrics, a NaN run, a killed run."""
    jobs = {
        "0": {"test/elbo": -90.0, "test/recon": 80.0, "test/kl": 10.0, "test/iwae_nll": 88.5,
              "test/active_units": 7, "test/mig": 0.25, "test/kl_per_dim": [1.0, 9.0]},
        "1": {"test/elbo": math.nan, "test/recon": math.nan, "test/kl": 3.0},
        "2": None,
    }  # fmt: skip
    for name, metrics in jobs.items():
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- model.beta={name}\n")
        (tmp_path / name / ".hydra" / "config.yaml").write_text(
            yaml.safe_dump({"model": {"beta": float(name), "latent_dim": 8}})
        )
        if metrics:
            (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    sweep.write_report(tmp_path)
    rows = read_report(tmp_path)
    assert [r["status"] for r in rows] == ["ok", "non-finite", "incomplete"]
    assert (rows[0]["test/iwae_nll"], rows[0]["test/active_units"], rows[0]["test/mig"]) == (
        "88.5",
        "7",
        "0.25",
    )
    assert rows[2]["test/elbo"] == ""
    assert (
        "| 0 | `model.beta=0` | -90 | 80 | 10 | 88.5 | 7 | 0.25 |"
        in (tmp_path / "report.md").read_text()
    )
    assert_png(tmp_path / "rate_distortion.png")


def test_report_groups_jobs_that_differ_only_in_seed(tmp_path):
    """Constructed job directories: two settings, two seeds each, one failed job left out."""
    elbos = {("a", 0): -90.0, ("a", 1): -94.0, ("b", 0): -80.0, ("b", 1): None}
    for number, ((setting, seed), elbo) in enumerate(elbos.items()):
        job = tmp_path / str(number)
        (job / ".hydra").mkdir(parents=True)
        overrides = [f"model.objective={setting}", f"seed={seed}"]
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"model": {"latent_dim": 4}}))
        if elbo is None:
            (job / "error.txt").write_text("ValueError: boom\n")
        else:
            metrics = {"test/elbo": elbo, "test/recon": -elbo - 5, "test/kl": 5.0}
            (job / "metrics.json").write_text(json.dumps(metrics))
    sweep.write_report(tmp_path)
    rows = {row["job"]: row for row in read_report(tmp_path)}
    for job in ("0", "1"):
        assert rows[job]["setting"] == "model.objective=a" and rows[job]["n_seeds"] == "2"
        assert float(rows[job]["test/elbo mean"]) == pytest.approx(-92.0)
        assert float(rows[job]["test/elbo std"]) == pytest.approx(math.sqrt(8.0))  # n - 1
    assert rows["2"]["n_seeds"] == "1" and rows["2"]["test/elbo std"] == ""
    assert rows["3"]["status"] == "failed" and rows["3"]["n_seeds"] == ""
    markdown = (tmp_path / "report.md").read_text()
    assert "| `model.objective=a` | 2 | -92 ± 2.8 |" in markdown
    assert "| `model.objective=b` | 1 | -80 |" in markdown
    for metric in ("test_elbo", "test_recon", "test_kl"):
        assert_png(tmp_path / f"seeds_{metric}.png")
    assert_png(tmp_path / "rate_distortion.png")  # coloured by the objective, the swept value


@pytest.mark.slow
def test_a_two_objective_two_seed_multirun_writes_the_grouped_report(tmp_path):
    result = run_script(
        "train.py", "-m", *TINY, "trainer.max_epochs=1", "callbacks.pictures=null",
        "model.objective=elbo,dip", "seed=0,1", f"hydra.sweep.dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_report(tmp_path)
    assert len(rows) == 4 and all(r["status"] == "ok" and r["n_seeds"] == "2" for r in rows)
    for setting in ("model/objective=elbo", "model/objective=dip"):
        members = [r for r in rows if r["setting"] == setting]
        values = [float(r["test/elbo"]) for r in members]
        assert float(members[0]["test/elbo mean"]) == pytest.approx(sum(values) / 2)
        assert float(members[0]["test/elbo std"]) == pytest.approx(
            abs(values[0] - values[1]) / 2**0.5
        )
    assert "## By setting, over seeds" in (tmp_path / "report.md").read_text()
    assert_png(tmp_path / "seeds_test_elbo.png")


def test_what_hydra_loads_as_it_starts_loads_no_torch_lightning_or_matplotlib():
    # the callbacks and the log filter of conf/hydra/: their imports, before the job, would be
    # counted as the run's `config` phase, not `imports`
    code = (
        "import sys, vae_lightning.hydra_callbacks, vae_lightning.file_only; "
        "print([m for m in ('torch', 'lightning', 'matplotlib') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
