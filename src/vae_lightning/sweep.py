"""Sweeps: a failing job recorded instead of ending the multirun, and a report over all jobs.

`python -m vae_lightning.sweep DIR` (re)writes the report of a finished sweep directory; the
`SweepReport` Hydra callback (hydra_callbacks.py) writes it when a multirun ends. The report, in
DIR:

- `report.csv` and `report.md`: one row per job: overrides, test metrics, wall time, status;
  and per setting (the jobs that differ only in `seed`): the number of seeds and the mean and
  standard deviation of every metric (report.md a table of its own, report.csv columns);
- `rate_distortion.png`: KL (the rate) against reconstruction (the distortion), one point per
  job, coloured by the first swept value (beta, an objective's weight, ...);
- `samples.png`: the last grid of prior samples of every job, labelled by its overrides;
- `seeds_<metric>.png`, when a setting ran with several seeds: each metric's values, a point per
  seed and a bar at the mean, one column per setting (the figure of Locatello et al. 2019).
"""

import csv
import functools
import json
import logging
import math
import re
import statistics
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
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.lines import Line2D
from omegaconf import DictConfig

from vae_lightning.progress import Progress

log = logging.getLogger(__name__)

ERROR_FILE = "error.txt"
METRICS = (
    "test/elbo",
    "test/recon",
    "test/kl",
    "test/iwae_nll",
    "test/active_units",
    "test/mig",
    "test/sap",
    "test/dci_disentanglement",
    "test/dci_completeness",
    "test/dci_informativeness",
    "test/beta_vae",
    "test/factor_vae",
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
    setting: str = ""  # the overrides that tell it apart, less its seed

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

    def override(self, key: str) -> str | None:
        """The value this job's command line gave `key`, as typed."""
        values = [o.split("=", 1)[1] for o in self.overrides if o.split("=", 1)[0] == key]
        return values[-1] if values else None


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def read_job(job_dir: Path) -> Job:
    hydra_dir = job_dir / ".hydra"
    config_path, metrics_path, error_path = (
        hydra_dir / "config.yaml",
        job_dir / "metrics.json",
        job_dir / ERROR_FILE,
    )
    samples = sorted((job_dir / "images").glob("samples_epoch_*.png"))
    return Job(
        name=job_dir.name,
        overrides=yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) or [],
        config=yaml.safe_load(config_path.read_text()) if config_path.exists() else {},
        metrics=json.loads(metrics_path.read_text()) if metrics_path.exists() else {},
        error=error_path.read_text().splitlines()[0] if error_path.exists() else "",
        samples=samples[-1] if samples else None,
    )


def job_directories(sweep_dir: Path) -> list[Path]:
    """The directories of the jobs under sweep_dir (those with .hydra/overrides.yaml), in order."""
    return sorted(
        (p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")), key=_natural_key
    )


def read_sweep(sweep_dir: Path, progress: Progress | None = None) -> tuple[list[Job], list[str]]:
    """The jobs under sweep_dir in job order, each labelled by the overrides that tell it apart
    from the others, and the overrides all jobs share; `progress` advanced by one per job."""
    job_dirs = job_directories(sweep_dir)
    jobs = [read_job(d) for d in (progress.track(job_dirs) if progress else job_dirs)]
    common = [o for o in jobs[0].overrides if all(o in j.overrides for j in jobs)] if jobs else []
    for job in jobs:
        distinct = [o for o in job.overrides if o not in common]
        job.label = " ".join(distinct) or f"job {job.name}"
        job.setting = " ".join(o for o in distinct if not o.startswith("seed=")) or "every job"
    return jobs, common


def seed_groups(jobs: list[Job]) -> dict[str, list[Job]]:
    """The finished jobs by setting: those that differ only in their seed, in job order."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        if job.status == "ok":
            groups.setdefault(job.setting, []).append(job)
    return groups


def spread(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _values(jobs: list[Job], key: str) -> list[float]:
    return [j.metrics[key] for j in jobs if isinstance(j.metrics.get(key), int | float)]


def _sorted(values: set[Any]) -> list[Any]:
    """Numbers in order, then names, then a missing value."""
    return sorted(
        values,
        key=lambda v: (0, v, "") if isinstance(v, int | float) else (1 + (v is None), 0, str(v)),
    )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_tables(jobs: list[Job], common: list[str], sweep_dir: Path) -> None:
    """report.csv (every override of each job, and its setting's statistics over seeds) and
    report.md (the overrides that differ; the metrics some job has; a table by setting)."""
    groups = seed_groups(jobs)
    stats = {
        setting: {key: spread(values) for key in METRICS if (values := _values(members, key))}
        for setting, members in groups.items()
    }
    header = ["job", "overrides", *METRICS, "status", "error", "setting", "n_seeds"]
    header += [f"{key} {stat}" for key in METRICS for stat in ("mean", "std")]
    with (sweep_dir / "report.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for job in jobs:
            values = [job.metrics.get(key) for key in METRICS]
            own = stats.get(job.setting, {}) if job.status == "ok" else {}
            n_seeds = len(groups[job.setting]) if own else None
            summary = [v for key in METRICS for v in own.get(key, (None, None))]
            writer.writerow(
                [job.name, " ".join(job.overrides), *values, job.status, job.error]
                + [job.setting, n_seeds, *summary]
            )

    shown = [key for key in METRICS if any(key in job.metrics for job in jobs)]
    columns = ["job", "overrides", *shown, "status", "error"]
    lines = [
        f"# Sweep report: {len(jobs)} jobs",
        "",
        f"Overrides of every job: `{' '.join(common)}`" if common else "",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for job in jobs:
        cells = [job.name, f"`{job.label}`", *(_cell(job.metrics.get(k)) for k in shown)]
        cells += [job.status, job.error.replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    if any(len(members) > 1 for members in groups.values()):
        lines += [
            "",
            "## By setting, over seeds (mean ± standard deviation)",
            "",
            "| setting | seeds | " + " | ".join(shown) + " |",
            "|" + "---|" * (len(shown) + 2),
        ]
        for setting, members in groups.items():
            cells = [f"`{setting}`", str(len(members))]
            for key in shown:
                mean, std = stats[setting].get(key, (None, None))
                cells.append(
                    "" if mean is None else _cell(mean) + ("" if std is None else f" ± {std:.2g}")
                )
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![rate-distortion](rate_distortion.png)", "", "![samples](samples.png)", ""]
    (sweep_dir / "report.md").write_text("\n".join(lines))


def strength_key(jobs: list[Job]) -> str:
    """The override that sets each job's strength: the first one whose value varies across the
    jobs (beta, an objective's weight, ...), other than the latent size and the seed."""
    for job in jobs:
        for override in job.overrides:
            key = override.split("=", 1)[0]
            if key in ("model.latent_dim", "seed"):
                continue
            if len({j.override(key) for j in jobs}) > 1:
                return key
    return "model.beta"


def plot_rate_distortion(jobs: list[Job], path: Path) -> None:
    """KL against reconstruction, one point per finished job: colour by the swept strength,
    marker by z size."""
    done = [j for j in jobs if j.status == "ok"]
    key = strength_key(jobs)

    def strength(job: Job) -> Any:
        value = job.override(key)
        if value is None:  # not on this job's command line: the config's beta, or unknown
            return job.hparam("model.beta") if key == "model.beta" else None
        try:
            return float(value)
        except ValueError:
            return value  # e.g. an objective's name

    strengths = _sorted({strength(j) for j in done})
    sizes = _sorted({j.hparam("model.latent_dim") for j in done})
    colours = matplotlib.colormaps["viridis"](
        [i / max(len(strengths) - 1, 1) for i in range(len(strengths))]
    )
    # A bare Figure renders with Agg and touches no pyplot state: safe on headless nodes.
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for job in done:
        ax.scatter(
            job.metrics["test/kl"],
            job.metrics["test/recon"],
            color=colours[strengths.index(strength(job))],
            marker=MARKERS[sizes.index(job.hparam("model.latent_dim")) % len(MARKERS)],
            s=60,
            edgecolors="black",
        )
    name = "β" if key == "model.beta" else key.removeprefix("model.")
    strength_handles = [
        Line2D([], [], color=c, marker="o", ls="", label=f"{name} = {v}")
        for v, c in zip(strengths, colours, strict=True)
    ]
    size_handles = [
        Line2D([], [], color="grey", marker=MARKERS[i % len(MARKERS)], ls="", label=f"z = {s}")
        for i, s in enumerate(sizes)
    ]
    ax.add_artist(ax.legend(handles=strength_handles, loc="upper right", fontsize="small"))
    ax.legend(handles=size_handles, loc="lower left", fontsize="small")
    ax.set_xlabel("rate: test KL (nats / image)")
    ax.set_ylabel("distortion: test reconstruction (nats / image)")
    ax.set_title(f"rate-distortion, {len(done)} of {len(jobs)} jobs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_seeds(jobs: list[Job], sweep_dir: Path) -> list[Path]:
    """For each metric, `seeds_<metric>.png`: a column per setting, a point per seed and a bar at
    the mean; only when some setting ran with more than one seed."""
    groups = seed_groups(jobs)
    if not any(len(members) > 1 for members in groups.values()):
        return []
    paths = []
    for key in METRICS:
        columns = [(s, _values(members, key)) for s, members in groups.items()]
        columns = [(s, values) for s, values in columns if values]
        if not columns:
            continue
        fig = Figure(figsize=(max(4.0, 1.2 * len(columns) + 1.5), 4.0))
        ax = fig.subplots()
        for x, (_, values) in enumerate(columns):
            offsets = [
                0.15 * (i - (len(values) - 1) / 2) / max(len(values), 1) for i in range(len(values))
            ]
            ax.scatter([x + o for o in offsets], values, color="tab:blue", s=30, zorder=3)
            ax.hlines(statistics.fmean(values), x - 0.25, x + 0.25, color="black", zorder=2)
        labels = ["\n".join(textwrap.wrap(s, 18)) for s, _ in columns]
        ax.set_xticks(range(len(columns)), labels, fontsize=7)
        ax.set_ylabel(key)
        ax.set_title(f"{key}: a point per seed, a bar at the mean", fontsize=8)
        fig.tight_layout()
        paths.append(sweep_dir / f"seeds_{key.replace('/', '_')}.png")
        fig.savefig(paths[-1], dpi=100)
    return paths


def contact_sheet(jobs: list[Job], path: Path, progress: Progress | None = None) -> None:
    """The last sample grid of every job in one figure, titled by the job's distinct overrides;
    `progress` advanced by one per job."""
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
        if progress:
            progress.advance()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(sweep_dir: Path) -> list[Job]:
    """Write report.csv, report.md, rate_distortion.png and samples.png into sweep_dir, with
    progress in steps: reading each job, each job's panel of samples.png, and the other three
    (tables, rate-distortion, seed plots), for sweeps of many jobs."""
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"SWEEP_DIR={str(sweep_dir)!r} is not a directory")
    n_jobs = len(job_directories(sweep_dir))
    if not n_jobs:
        raise FileNotFoundError(f"no job directories (with .hydra/overrides.yaml) in {sweep_dir}")
    # Its steps are no unit a user knows: the line below, not a count of them, ends the report.
    with Progress(
        f"sweep report of {n_jobs} jobs", 2 * n_jobs + 3, "steps", closing_line=False
    ) as progress:
        jobs, common = read_sweep(sweep_dir, progress)
        write_tables(jobs, common, sweep_dir)
        progress.advance()
        plot_rate_distortion(jobs, sweep_dir / "rate_distortion.png")
        progress.advance()
        contact_sheet(jobs, sweep_dir / "samples.png", progress)
        plot_seeds(jobs, sweep_dir)
        progress.advance()
    failed = sum(job.status != "ok" for job in jobs)
    log.info("sweep report of %d jobs (%d not ok) in %s", len(jobs), failed, sweep_dir)
    return jobs


# A local DDP sweep runs the multirun once per process (Lightning starts the others with the same
# command line): the report is rank zero's to write.
@rank_zero_only
def write_report_once(sweep_dir: Path) -> None:
    """write_report, by the process of rank zero only (hydra_callbacks.SweepReport's)."""
    write_report(sweep_dir)


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
