"""Sweeps: a failing job recorded instead of ending the multirun, and a report over all jobs.

`python -m vae_lightning.sweep DIR` (re)writes the report of a finished sweep directory; the
`SweepReport` Hydra callback writes it when a multirun ends. The report, in DIR:

- `report.csv` and `report.md`: one row per job: overrides, test metrics, wall time, status;
- `rate_distortion.png`: KL (the rate) against reconstruction (the distortion), one point per job;
- `samples.png`: the last grid of prior samples of every job, labelled by its overrides.
"""

import csv
import functools
import json
import logging
import math
import re
import sys
import textwrap
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.lines import Line2D
from omegaconf import DictConfig

log = logging.getLogger(__name__)

ERROR_FILE = "error.txt"
METRICS = (
    "test/elbo",
    "test/recon",
    "test/kl",
    "test/iwae_nll",
    "test/active_units",
    "test/mig",
    "best_val/loss",
    "wall_time_s",
)
MARKERS = "osD^vP*Xh<>p"


def record_failure_in_multirun(main: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """In a multirun, a job that raises writes `error.txt` to its directory and returns None, so
    the launcher goes on with the other jobs (Hydra's basic launcher would end the whole sweep)
    and an Optuna sweeper marks the trial failed. A single run still fails as usual."""

    @functools.wraps(main)
    def wrapper(cfg: DictConfig) -> Any:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            return main(cfg)
        try:
            result = main(cfg)
        except Exception as error:  # the job is over either way; record why, let the sweep go on
            log.exception("job failed")
            summary = " ".join(f"{type(error).__name__}: {error}".split())
            output_dir = Path(HydraConfig.get().runtime.output_dir)
            (output_dir / ERROR_FILE).write_text(f"{summary}\n\n{traceback.format_exc()}")
            return None
        # Optuna rejects NaN with an error that ends the study; None marks just this trial failed.
        return None if isinstance(result, float) and math.isnan(result) else result

    return wrapper


@dataclass
class Job:
    """One job directory of a sweep, as read back from its files."""

    name: str
    overrides: list[str]
    config: dict[str, Any]
    metrics: dict[str, Any]
    error: str = ""
    samples: Path | None = None
    label: str = ""

    @property
    def status(self) -> str:
        if self.error:
            return "failed"
        if not self.metrics:
            return "incomplete"  # killed, still running, or not a training job
        finite = all(
            isinstance(v, int | float) and math.isfinite(v)
            for k, v in self.metrics.items()
            if k.startswith("test/") and not isinstance(v, list)
        )
        return "ok" if finite else "non-finite"

    def hparam(self, key: str) -> Any:
        section, name = key.split(".")
        return (self.config.get(section) or {}).get(name)


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def read_job(job_dir: Path) -> Job:
    hydra_dir = job_dir / ".hydra"
    config_path, metrics_path, error_path = (
        hydra_dir / "config.yaml",
        job_dir / "metrics.json",
        job_dir / ERROR_FILE,
    )
    samples = sorted((job_dir / "images").glob("samples_epoch=*.png"))
    return Job(
        name=job_dir.name,
        overrides=yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) or [],
        config=yaml.safe_load(config_path.read_text()) if config_path.exists() else {},
        metrics=json.loads(metrics_path.read_text()) if metrics_path.exists() else {},
        error=error_path.read_text().splitlines()[0] if error_path.exists() else "",
        samples=samples[-1] if samples else None,
    )


def read_sweep(sweep_dir: Path) -> tuple[list[Job], list[str]]:
    """The jobs under sweep_dir in job order, each labelled by the overrides that tell it apart
    from the others, and the overrides all jobs share."""
    job_dirs = sorted(
        (p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")), key=_natural_key
    )
    jobs = [read_job(d) for d in job_dirs]
    common = [o for o in jobs[0].overrides if all(o in j.overrides for j in jobs)] if jobs else []
    for job in jobs:
        job.label = " ".join(o for o in job.overrides if o not in common) or f"job {job.name}"
    return jobs, common


def _sorted(values: set[Any]) -> list[Any]:
    return sorted(values, key=lambda v: math.inf if v is None else v)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_tables(jobs: list[Job], common: list[str], sweep_dir: Path) -> None:
    """report.csv (every override of each job) and report.md (the ones that differ)."""
    header = ["job", "overrides", *METRICS, "status", "error"]
    with (sweep_dir / "report.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for job in jobs:
            values = [job.metrics.get(key) for key in METRICS]
            writer.writerow([job.name, " ".join(job.overrides), *values, job.status, job.error])

    lines = [
        f"# Sweep report: {len(jobs)} jobs",
        "",
        f"Overrides of every job: `{' '.join(common)}`" if common else "",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for job in jobs:
        cells = [job.name, f"`{job.label}`", *(_cell(job.metrics.get(k)) for k in METRICS)]
        cells += [job.status, job.error.replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![rate-distortion](rate_distortion.png)", "", "![samples](samples.png)", ""]
    (sweep_dir / "report.md").write_text("\n".join(lines))


def plot_rate_distortion(jobs: list[Job], path: Path) -> None:
    """KL against reconstruction, one point per finished job: colour by beta, marker by z size."""
    done = [j for j in jobs if j.status == "ok"]
    betas = _sorted({j.hparam("model.beta") for j in done})
    sizes = _sorted({j.hparam("model.latent_dim") for j in done})
    colours = matplotlib.colormaps["viridis"](
        [i / max(len(betas) - 1, 1) for i in range(len(betas))]
    )
    # A bare Figure renders with Agg and touches no pyplot state: safe on headless nodes.
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for job in done:
        ax.scatter(
            job.metrics["test/kl"],
            job.metrics["test/recon"],
            color=colours[betas.index(job.hparam("model.beta"))],
            marker=MARKERS[sizes.index(job.hparam("model.latent_dim")) % len(MARKERS)],
            s=60,
            edgecolors="black",
        )
    beta_handles = [
        Line2D([], [], color=c, marker="o", ls="", label=f"β = {b}")
        for b, c in zip(betas, colours, strict=True)
    ]
    size_handles = [
        Line2D([], [], color="grey", marker=MARKERS[i % len(MARKERS)], ls="", label=f"z = {s}")
        for i, s in enumerate(sizes)
    ]
    ax.add_artist(ax.legend(handles=beta_handles, loc="upper right", fontsize="small"))
    ax.legend(handles=size_handles, loc="lower left", fontsize="small")
    ax.set_xlabel("rate: test KL (nats / image)")
    ax.set_ylabel("distortion: test reconstruction (nats / image)")
    ax.set_title(f"rate-distortion, {len(done)} of {len(jobs)} jobs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def contact_sheet(jobs: list[Job], path: Path) -> None:
    """The last sample grid of every job in one figure, titled by the job's distinct overrides."""
    n_cols = math.ceil(math.sqrt(len(jobs)))
    n_rows = math.ceil(len(jobs) / n_cols)
    fig = Figure(figsize=(3 * n_cols, 3.4 * n_rows))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, job in zip(axes.flat, jobs, strict=False):  # spare axes stay blank
        ax.set_title("\n".join(textwrap.wrap(f"{job.name}: {job.label}", 40)), fontsize=7)
        if job.samples:
            ax.imshow(imread(job.samples), cmap="gray")
        else:
            ax.text(0.5, 0.5, f"no samples\n({job.status})", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(sweep_dir: Path) -> list[Job]:
    """Write report.csv, report.md, rate_distortion.png and samples.png into sweep_dir."""
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"SWEEP_DIR={str(sweep_dir)!r} is not a directory")
    jobs, common = read_sweep(sweep_dir)
    if not jobs:
        raise FileNotFoundError(f"no job directories (with .hydra/overrides.yaml) in {sweep_dir}")
    write_tables(jobs, common, sweep_dir)
    plot_rate_distortion(jobs, sweep_dir / "rate_distortion.png")
    contact_sheet(jobs, sweep_dir / "samples.png")
    failed = sum(job.status != "ok" for job in jobs)
    log.info("sweep report of %d jobs (%d not ok) in %s", len(jobs), failed, sweep_dir)
    return jobs


class SweepReport(Callback):
    """Hydra callback: write the report into the sweep directory when a multirun ends."""

    # A local DDP sweep runs the multirun once per process (Lightning starts the others with the
    # same command line): the report is rank zero's to write.
    @rank_zero_only
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        write_report(Path(config.hydra.sweep.dir))


def main(argv: list[str]) -> int:
    """`python -m vae_lightning.sweep SWEEP_DIR`: rewrite the report of a sweep directory."""
    if len(argv) != 1:
        print("usage: python -m vae_lightning.sweep SWEEP_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        write_report(Path(argv[0]))
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
