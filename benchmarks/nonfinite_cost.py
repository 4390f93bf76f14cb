"""What NonFiniteGuard's check costs a training step, on this machine's device.

    python benchmarks/nonfinite_cost.py                 # MLP 784-400-20, batch 128
    python benchmarks/nonfinite_cost.py --network conv --image-size 32

A plain loop of the project's model (forward, ELBO loss, backward, Adam) over one batch of
random images, in alternating chunks of `--chunk` steps: with no check, with the old per-step
check (`on_nonfinite=skip` reads each step's loss on the host, as `stop` used to), and with
`stop`'s check (the loss copied into a buffer on the device, read back once per
`log_every_n_steps`). Prints each variant's median seconds per step and its ratio to no check.
On a GPU the per-step read makes the host wait for the device's queue to drain every step; on a
CPU there is no queue, and the read costs only its Python call.
"""

import argparse
import statistics
import time

import lightning as L
import torch

from vae_lightning.module import VAE
from vae_lightning.reliability import NonFiniteGuard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--network", default="mlp")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=50)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    hidden = [400] if args.network == "mlp" else [32, 64]
    latent = 20 if args.network == "mlp" else 10
    shape = (1, args.image_size, args.image_size)
    model = VAE(shape, network=args.network, hidden_dims=hidden, latent_dim=latent).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.rand(128, *shape, device=device)
    # An unfitted Trainer: the guard reads only its step counters and log_every_n_steps (50).
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    guards = {"none": None, "per-step read": NonFiniteGuard("skip"), "buffered": NonFiniteGuard()}

    def steps(guard: NonFiniteGuard | None) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(args.chunk):
            loss = model.elbo_terms(images).loss(model.beta)
            if guard is not None:
                guard.on_before_backward(trainer, model, loss)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - started) / args.chunk

    for guard in guards.values():  # warm-up
        steps(guard)
    seconds = {name: [] for name in guards}
    for _ in range(args.chunks):
        for name, guard in guards.items():
            seconds[name].append(steps(guard))
    base = statistics.median(seconds["none"])
    print(f"{args.network}, batch 128, {device}, {torch.get_num_threads()} threads")
    for name, values in seconds.items():
        ratios = [b / s for b, s in zip(seconds["none"], values, strict=True)]
        print(
            f"{name:>14}: {statistics.median(values) * 1e3:.3f} ms/step, speed relative to no "
            f"check {base / statistics.median(values):.4f} (chunk pairs: median "
            f"{statistics.median(ratios):.4f}, {min(ratios):.4f}-{max(ratios):.4f})"
        )


if __name__ == "__main__":
    main()
