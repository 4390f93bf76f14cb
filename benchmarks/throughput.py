"""Training throughput of this project under Lightning against a hand-written PyTorch loop.

    python benchmarks/throughput.py                       # MLP 784-400-20 on Fashion-MNIST
    python benchmarks/throughput.py data=shapes model=conv --steps 300
    python benchmarks/throughput.py --count-calls --steps 200     # Python calls per step instead

In one process, with the same model, initial weights, optimiser, data, batch size and number of
steps, it times
(a) a plain loop: a float tensor of the training images in memory, one permutation per epoch,
    a batch gathered from it, forward, loss, backward, optimiser step;
(b) `train.py`'s own objects: the VAE LightningModule and the DataModule under Lightning's
    Trainer built from conf/trainer and conf/callbacks (logger, checkpoints, reliability
    callbacks, console callbacks as train.py adds them), with validation off
    (`limit_val_batches=0`). Its output not being a terminal, the progress bar is train.py's
    one line per epoch.
Both compute the loss with the same method (the model's public `elbo_terms`), so the
difference is the framework and the data path.

The two alternate in chunks of `--chunk` steps inside one `fit`: after every chunk of (b), a
callback runs the next chunk of (a), so both see the same moment of the machine. (On the
shared 2-core machine this was written on, host contention changed the speed of a fixed matrix
product by up to 50% from one second to the next; rounds of a few seconds each paired badly.)
The first `--warmup` steps of each are not timed, so Trainer start-up is not counted, and
neither are the ends of epochs: what (b) spends there (pictures, checkpoint) is printed apart.

Two clocks: wall time, and the CPU time of the process (all its threads). The headline ratio is
(b)/(a) of the images per second over all timed chunks; the median and spread of the chunk
pairs' ratios show how steady it was.
"""

import argparse
import cProfile
import pstats
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from vae_lightning.callbacks import console_callbacks
from vae_lightning.cli import instantiate_all

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = ["data=fashion_mnist", "model=mlp"]
CLOCKS = ("wall", "cpu")


def clocks(device: torch.device) -> tuple[float, float]:
    """(wall, process CPU) seconds now, after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter(), time.process_time()


def hand_written(cfg, datamodule, device: torch.device) -> Iterator[None]:
    """(a): each next() runs one training step of a plain loop."""
    L.seed_everything(cfg.seed)
    model = instantiate(cfg.model, image_shape=datamodule.image_shape, _recursive_=False)
    model.to(device)
    optimizer = instantiate(cfg.model.optimizer)(model.parameters())
    images = datamodule.split("train").images.to(device).float().div(255)
    batch_size = cfg.data.batch_size
    while True:
        order = torch.randperm(len(images), device=device)
        for first in range(0, len(images) - batch_size + 1, batch_size):
            x = images.index_select(0, order[first : first + batch_size])
            loss = model.elbo_terms(x).loss(model.beta)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            yield


class Alternate(L.Callback):
    """Times (b) in chunks of Lightning steps and runs a chunk of (a) after each.

    A chunk of (b) that spans the end of an epoch (picture callbacks, epoch-end checkpoint and
    logging, a new shuffle) is kept apart in `b_epoch_end`, and the (a) chunk after it is not
    timed: the hand-written loop has no epoch-end work to compare with."""

    def __init__(self, hand_written_steps: Iterator[None], warmup: int, chunk: int, device):
        self.a_steps, self.warmup, self.chunk = hand_written_steps, warmup, chunk
        self.device = device
        self.a: list[tuple[float, float]] = []  # (wall, cpu) seconds of each chunk
        self.b: list[tuple[float, float]] = []
        self.b_epoch_end: list[tuple[float, float]] = []
        self.b_started = (0.0, 0.0)
        self.b_epoch = 0
        self.a_seconds = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            for _ in range(self.warmup):
                next(self.a_steps)
            self.b_started = clocks(self.device)
            self.b_epoch = trainer.current_epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        done = trainer.global_step - self.warmup
        if done <= 0 or done % self.chunk:
            return
        stopped = clocks(self.device)
        b = (stopped[0] - self.b_started[0], stopped[1] - self.b_started[1])
        spans_epoch_end = trainer.current_epoch != self.b_epoch
        (self.b_epoch_end if spans_epoch_end else self.b).append(b)
        for _ in range(self.chunk):
            next(self.a_steps)
        self.b_started = clocks(self.device)
        self.b_epoch = trainer.current_epoch
        self.a_seconds += self.b_started[0] - stopped[0]
        if not spans_epoch_end:
            self.a.append((self.b_started[0] - stopped[0], self.b_started[1] - stopped[1]))


def fit_project(cfg, datamodule, max_steps: int, tmp: Path, measure: L.Callback) -> float:
    """(b): train.py's model, callbacks, loggers and Trainer, validation off, with `measure`
    added; the wall seconds of the fit."""
    L.seed_everything(cfg.seed)
    model = instantiate(
        cfg.model, image_shape=datamodule.image_shape, _recursive_=False, _convert_="all"
    )
    callbacks = [*instantiate_all(cfg.callbacks), *console_callbacks(cfg.trainer)]
    loggers = instantiate_all(cfg.logger)
    trainer = instantiate(
        cfg.trainer,
        default_root_dir=tmp,
        max_steps=max_steps,
        limit_val_batches=0,
        callbacks=[*callbacks, measure],
        logger=loggers or False,
    )
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    return time.perf_counter() - started


def alternate(cfg, datamodule, steps: int, warmup: int, chunk: int, tmp: Path):
    """Both loops, alternating in one fit: the Alternate callback, and the fit's wall seconds
    without the (a) chunks."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    alternation = Alternate(hand_written(cfg, datamodule, device), warmup, chunk, device)
    fit_seconds = fit_project(cfg, datamodule, warmup + steps, tmp, alternation)
    return alternation, fit_seconds - alternation.a_seconds


class CountCalls(L.Callback):
    """Profiles training steps warmup+1 .. warmup+steps of (b) with cProfile."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps
        self.profile = cProfile.Profile()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.profile.enable()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.warmup + self.steps:
            self.profile.disable()


def calls_per_step(cfg, datamodule, steps: int, warmup: int, tmp: Path) -> tuple[float, float]:
    """Python function calls (cProfile's count, built-ins included) of one training step of (a)
    and of (b): the framework's share of a step, in a unit that host contention does not move."""
    a_steps = hand_written(cfg, datamodule, torch.device("cpu"))
    for _ in range(warmup):
        next(a_steps)
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(steps):
        next(a_steps)
    profile.disable()
    counter = CountCalls(warmup, steps)
    fit_project(cfg, datamodule, warmup + steps, tmp, counter)
    return (
        pstats.Stats(profile).total_calls / steps,
        pstats.Stats(counter.profile).total_calls / steps,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. model=conv")
    parser.add_argument("--steps", type=int, default=2000, help="timed steps of each loop")
    parser.add_argument("--chunk", type=int, default=25, help="steps per alternation")
    parser.add_argument("--warmup", type=int, default=30)
    # One thread by default: on a shared machine, a second thread waiting for a busy core makes
    # each matrix product many times slower, and the timings noise.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--count-calls",
        action="store_true",
        help="count the Python calls of a training step of each loop instead of timing them",
    )
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
    if args.count_calls:
        a, b = calls_per_step(cfg, datamodule, args.steps, args.warmup, tmp)
        print(
            f"config: {' '.join([*DEFAULTS, *args.overrides])}; Python calls per training step "
            f"over {args.steps} steps: (a) hand-written {a:.0f}, (b) Lightning {b:.0f}"
        )
        return
    steps = args.steps - args.steps % args.chunk
    alternation, fit_seconds = alternate(cfg, datamodule, steps, args.warmup, args.chunk, tmp)

    batch = cfg.data.batch_size
    print(
        f"config: {' '.join([*DEFAULTS, *args.overrides])}, batch {batch}, {steps} timed steps "
        f"of each loop ({args.warmup} warm-up) in chunks of {args.chunk}, "
        f"device {alternation.device}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, lightning {L.__version__}"
    )
    steps_per_epoch = len(datamodule.train_dataloader())
    for i, clock in enumerate(CLOCKS):
        a = sum(seconds[i] for seconds in alternation.a)
        b = sum(seconds[i] for seconds in alternation.b)
        timed = len(alternation.a) * args.chunk
        pairs = [x[i] / y[i] for x, y in zip(alternation.a, alternation.b, strict=True)]
        deciles = statistics.quantiles(pairs, n=10)
        print(
            f"{clock:>4} clock: (a) hand-written {timed * batch / a:6.0f} images/s, "
            f"(b) Lightning {timed * batch / b:6.0f} images/s; ratio (b)/(a) {a / b:.3f} "
            f"(chunk pairs: median {statistics.median(pairs):.3f}, "
            f"10-90% {deciles[0]:.3f}-{deciles[-1]:.3f})"
        )
    if alternation.b_epoch_end:
        chunk_seconds = statistics.median(seconds[0] for seconds in alternation.b)
        extra = statistics.mean(seconds[0] for seconds in alternation.b_epoch_end) - chunk_seconds
        epoch_seconds = chunk_seconds / args.chunk * steps_per_epoch
        print(
            f"epoch ends of (b), not in the ratio: {len(alternation.b_epoch_end)} in the timed "
            f"steps, each {extra:.2f} s wall over a chunk of steps, {extra / epoch_seconds:.1%} "
            f"of an epoch of {steps_per_epoch} steps"
        )
    print(
        f"whole fit() of (b), start-up and epoch ends included: "
        f"{(args.warmup + steps) * batch / fit_seconds:.0f} images/s"
    )


if __name__ == "__main__":
    main()
