"""What NonFiniteGuard's check costs a training step, on this machine's device.

    python benchmarks/nonfinite_cost.py                 # MLP 784-400-20, batch 128
    python benchmarks/nonfinite_cost.py --network conv --image-size 32

The project's model (forward, ELBO loss, backward, Adam) on one batch of random images, and
NonFiniteGuard's work at a step, each timed on its own and alternated: no check, the old
per-step check (`on_nonfinite=skip` reads each step's loss on the host, as `stop` used to), and
`stop`'s check (the loss copied into a buffer on the device, read back once per
`log_every_n_steps`). The fastest of `--repeats` rounds counts, so that other work on a shared
machine drops out; it prints the microseconds each check adds to a step and the speed a step
keeps with it. On a GPU the per-step read makes the host wait until the device's queue has
drained, every step; on a CPU there is no queue, and a read costs only its calls.
"""

import argparse
import time

import lightning as L
import torch

from vae_lightning.module import VAE
from vae_lightning.reliability import NonFiniteGuard


def fastest(work, calls: int, repeats: int, device: torch.device) -> float:
    """The least seconds per call of `work` over `repeats` rounds of `calls` calls."""
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(calls):
            work()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - started) / calls)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--network", default="mlp")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=20)
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
    loss = model.elbo_terms(images).loss(model.beta).detach()

    def step() -> None:
        loss = model.elbo_terms(images).loss(model.beta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    checks = {
        "per-step read (old)": NonFiniteGuard("skip"),
        "buffered (stop)": NonFiniteGuard("stop"),
    }
    step_s = fastest(step, 20, args.repeats, device)
    print(
        f"{args.network}, batch 128, {device}, {torch.get_num_threads()} threads: a training "
        f"step {step_s * 1e3:.3f} ms"
    )
    for name, guard in checks.items():
        check_s = fastest(
            lambda guard=guard: guard.on_before_backward(trainer, model, loss),
            1000,
            args.repeats,
            device,
        )
        print(
            f"{name:>20}: {check_s * 1e6:.2f} us a step; a step keeps "
            f"{step_s / (step_s + check_s):.4f} of its speed"
        )


if __name__ == "__main__":
    main()
