"""Training throughput of this project under Lightning against a hand-written PyTorch loop.

    python benchmarks/throughput.py                       # MLP 784-400-20 on Fashion-MNIST
    python benchmarks/throughput.py data=shapes model=conv --steps 300

In one process, with the same model, data, batch size and number of steps, it times
(a) a plain loop: shuffle an in-memory float tensor, slice a batch, forward, loss, backward, step;
(b) `train.py`'s own objects: the VAE LightningModule and the DataModule under Lightning's
    Trainer built from conf/trainer and conf/callbacks (logger, checkpoints, reliability
    callbacks, console callbacks as train.py adds them), with validation off
    (`limit_val_batches=0`), so the image callbacks, which run after it, do not run either.
    Its output not being a terminal, the progress bar is train.py's one line per epoch.
Both compute the loss with the same function (elbo.elbo_terms), so the difference is the
framework and the data path. Steady state: the clocks start after `--warmup` steps, so Trainer
start-up is not counted (the whole `fit` call is reported on its own line).

Two clocks: wall time, and the CPU time of the process (all its threads). On a machine shared
with other jobs the wall time of either loop varies at random; the CPU time is what the work
costs, and on an otherwise idle machine a one-thread run takes that long. The rounds alternate
(a) and (b); the headline ratio is the median over rounds of (b)/(a) within a round.
"""

import argparse
import statistics
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from vae_lightning.callbacks import console_callbacks
from vae_lightning.cli import instantiate_all
from vae_lightning.elbo import elbo_terms

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = ["data=fashion_mnist", "model=mlp"]


def clocks(device: torch.device) -> tuple[float, float]:
    """(wall, process CPU) seconds now, after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter(), time.process_time()


class StepClock(L.Callback):
    """Both clocks from the start of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.started = self.stopped = (0.0, 0.0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.started = clocks(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == trainer.max_steps:
            self.stopped = clocks(pl_module.device)


def hand_written(cfg, datamodule, steps: int, warmup: int, device: torch.device):
    """(a): (wall, CPU) seconds for steps warmup..steps of a plain loop."""
    L.seed_everything(cfg.seed)
    model = instantiate(cfg.model, image_shape=datamodule.image_shape, _recursive_=False)
    model.to(device)
    optimizer = instantiate(cfg.model.optimizer)(model.parameters())
    images = datamodule.split("train").images.to(device).float().div(255)
    batch_size, step = cfg.data.batch_size, 0
    while True:
        order = torch.randperm(len(images), device=device)
        for first in range(0, len(images) - batch_size + 1, batch_size):
            if step == warmup:
                started = clocks(device)
            x = images[order[first : first + batch_size]]
            loss = elbo_terms(model.likelihood, x, *model(x)).loss(model.beta)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == steps:
                stopped = clocks(device)
                return stopped[0] - started[0], stopped[1] - started[1]


def with_lightning(cfg, datamodule, steps: int, warmup: int, tmp: Path):
    """(b): (wall, CPU) seconds for steps warmup..steps, and wall seconds of the whole fit."""
    L.seed_everything(cfg.seed)
    model = instantiate(
        cfg.model, image_shape=datamodule.image_shape, _recursive_=False, _convert_="all"
    )
    clock = StepClock(warmup)
    callbacks = [*instantiate_all(cfg.callbacks), *console_callbacks(cfg.trainer)]
    loggers = instantiate_all(cfg.logger)
    trainer = instantiate(
        cfg.trainer,
        default_root_dir=tmp,
        max_steps=steps,
        limit_val_batches=0,
        callbacks=[*callbacks, clock],
        logger=loggers or False,
    )
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    whole = time.perf_counter() - started
    return clock.stopped[0] - clock.started[0], clock.stopped[1] - clock.started[1], whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. model=conv")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    # One thread by default: on a shared machine, a second thread waiting for a busy core makes
    # each matrix product many times slower, and the timings noise.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tmp = ROOT / "outputs" / "benchmark"
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                *DEFAULTS,
                f"paths.root_dir={ROOT}",
                f"paths.output_dir={tmp}",
                "trainer.enable_model_summary=false",
                *args.overrides,
            ],
        )
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    images = (args.steps - args.warmup) * cfg.data.batch_size

    rates: dict[str, list[float]] = {"a wall": [], "a cpu": [], "b wall": [], "b cpu": []}
    whole = []
    for _ in range(args.rounds):
        wall, cpu = hand_written(cfg, datamodule, args.steps, args.warmup, device)
        rates["a wall"].append(images / wall)
        rates["a cpu"].append(images / cpu)
        wall, cpu, fit = with_lightning(cfg, datamodule, args.steps, args.warmup, tmp)
        rates["b wall"].append(images / wall)
        rates["b cpu"].append(images / cpu)
        whole.append(args.steps * cfg.data.batch_size / fit)
        print("round, images/s: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()))

    print(
        f"config: {' '.join([*DEFAULTS, *args.overrides])}, batch {cfg.data.batch_size}, "
        f"{args.steps} steps ({args.warmup} warm-up), {args.rounds} rounds, device {device}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, lightning {L.__version__}"
    )
    for clock in ("wall", "cpu"):
        a, b = rates[f"a {clock}"], rates[f"b {clock}"]
        # (a) and (b) of one round ran back to back, under much the same load from elsewhere
        paired = statistics.median(y / x for x, y in zip(a, b, strict=True))
        print(
            f"{clock:>4} clock: (a) hand-written {max(a):6.0f} images/s, "
            f"(b) Lightning {max(b):6.0f} images/s (best rounds); ratio (b)/(a): "
            f"{paired:.3f} median of the rounds' ratios, {max(b) / max(a):.3f} of the best rounds"
        )
    print(f"whole fit() of (b), start-up included: best {max(whole):.0f} images/s")


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


if __name__ == "__main__":
    main()
