"""Training throughput of this project under Lightning against a hand-written PyTorch loop.

    python benchmarks/throughput.py                       # MLP 784-400-20 on Fashion-MNIST
    python benchmarks/throughput.py data=shapes model=conv --steps 300

In one process, with the same model, data, batch size and number of steps, it times
(a) a plain loop: shuffle an in-memory float tensor, slice a batch, forward, loss, backward, step;
(b) `train.py`'s own objects: the VAE LightningModule and the DataModule under Lightning's
    Trainer built from conf/trainer (logger, checkpointing and progress bar as configured),
    with validation turned off for the timed part (`limit_val_batches=0`), so the image-grid
    callback, which runs after validation, does not run either.
Both compute the loss with the same function (elbo.elbo_terms), so the difference is the
framework and the data path. The rounds alternate (a) and (b) and the median is reported, as
other processes on the machine slow either one at random. Steady state: the clock starts after
`--warmup` steps, so Trainer start-up (and the first-batch allocations of both) is not counted;
the whole `fit` call is reported on its own line.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from vae_lightning.elbo import elbo_terms

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = ["data=fashion_mnist", "model=mlp"]


class StepClock(L.Callback):
    """Wall time from the start of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.started, self.stopped = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.stopped = time.perf_counter()  # the last step's time is the one that stays


def hand_written(cfg, datamodule, steps: int, warmup: int, device: torch.device) -> float:
    """(a): seconds for steps warmup..steps of a plain loop."""
    L.seed_everything(cfg.seed)
    model = instantiate(cfg.model, image_shape=datamodule.image_shape, _recursive_=False)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.model.optimizer.lr)
    images = datamodule.split("train").images.to(device).float().div(255)
    batch_size, step = cfg.data.batch_size, 0
    while True:
        order = torch.randperm(len(images), device=device)
        for first in range(0, len(images) - batch_size + 1, batch_size):
            if step == warmup:
                started = time.perf_counter()
            x = images[order[first : first + batch_size]]
            loss = elbo_terms(model.likelihood, x, *model(x)).loss(model.beta)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == steps:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                return time.perf_counter() - started


def with_lightning(cfg, datamodule, steps: int, warmup: int, tmp: Path) -> tuple[float, float]:
    """(b): seconds for steps warmup..steps, and for the whole fit call."""
    L.seed_everything(cfg.seed)
    model = instantiate(
        cfg.model, image_shape=datamodule.image_shape, _recursive_=False, _convert_="all"
    )
    clock = StepClock(warmup)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c]
    loggers = [instantiate(c) for c in cfg.logger.values() if c]
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
    return clock.stopped - clock.started, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. model=conv")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
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
    timed = args.steps - args.warmup
    images = timed * cfg.data.batch_size

    plain, framework, whole = [], [], []
    for _ in range(args.rounds):
        plain.append(images / hand_written(cfg, datamodule, args.steps, args.warmup, device))
        steady, total = with_lightning(cfg, datamodule, args.steps, args.warmup, tmp)
        framework.append(images / steady)
        whole.append(args.steps * cfg.data.batch_size / total)
        print(f"round: (a) {plain[-1]:.0f}, (b) {framework[-1]:.0f} images/s", flush=True)

    a, b = statistics.median(plain), statistics.median(framework)
    threads = torch.get_num_threads()
    print(
        f"config: {' '.join([*DEFAULTS, *args.overrides])}, batch {cfg.data.batch_size}, "
        f"{args.steps} steps ({args.warmup} warm-up), {args.rounds} rounds, device {device}, "
        f"{threads} threads, torch {torch.__version__}, lightning {L.__version__}"
    )
    print(f"(a) hand-written loop:      {a:10.0f} images/s  (rounds: {_fmt(plain)})")
    print(f"(b) Lightning + DataModule: {b:10.0f} images/s  (rounds: {_fmt(framework)})")
    print(f"    whole fit() incl. start-up: {statistics.median(whole):6.0f} images/s")
    print(f"ratio (b)/(a): {b / a:.3f}")
    sys.stdout.flush()


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


if __name__ == "__main__":
    main()
