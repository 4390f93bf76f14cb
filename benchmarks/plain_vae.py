"""Program (a) of process_speed.py: a VAE trained by a plain PyTorch loop, as pytorch/examples'
VAE is, over an in-memory tensor.

    python benchmarks/plain_vae.py DATA.pt --epochs 3 --out DIR [--threads N]

DATA.pt (written by process_speed.py) holds the training and validation images of the project's
own split as uint8 tensors and the model's settings. Each epoch: one shuffle, batches sliced from
the float tensor, the ELBO's loss, backward, Adam; then the loss on the validation split and two
checkpoints (the best so far by validation loss, and the last), as train.py writes them. The
encoder and decoder are the project's (its network part, plain torch modules), so the
arithmetic is the same; nothing else of the project, no Lightning. It prints one line per epoch,
`epoch N end T`, T being time.time() after the epoch's checkpoints.
"""

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vae_lightning.parts import build_part


def load(path: str) -> dict:
    """The benchmark's data and settings, the images as floats in [0, 1]."""
    data = torch.load(path, weights_only=True)
    data["train"] = data["train"].float().div_(255)
    data["val"] = data["val"].float().div_(255)
    return data


def build(data: dict) -> torch.nn.Module:
    """The project's network (encoder and decoder) for a Bernoulli likelihood's one channel and
    a diagonal Gaussian posterior's mu and log sigma^2."""
    return build_part(
        data["network"],
        image_shape=data["image_shape"],
        latent_dim=data["latent_dim"],
        out_channels=1,
        encoder_outputs=2 * data["latent_dim"],
    )


def loss_function(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The negative ELBO per image, averaged over the batch: Bernoulli p(x|z) on grey values,
    N(0, I) prior, one reparameterised draw."""
    mu, logvar = model.encoder(x).chunk(2, dim=1)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    logits = model.decoder(z)
    log_px = (x * logits).sum((1, 2, 3)) - F.softplus(logits).sum((1, 2, 3))
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    return (kl - log_px).mean()


def arguments() -> argparse.Namespace:
    """The command line of (a) and (b)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, help="PyTorch's threads; default: its own")
    parser.add_argument("--limit-batches", type=int, help="training batches per epoch")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return args


def main() -> None:
    args = arguments()
    data = load(args.data)
    train, val, batch_size = data["train"], data["val"], data["batch_size"]
    model = build(data)
    optimizer = torch.optim.Adam(model.parameters(), lr=data["lr"])
    args.out.mkdir(parents=True, exist_ok=True)
    best = float("inf")
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(train))
        for first in range(0, len(train), batch_size)[: args.limit_batches]:
            x = train[order[first : first + batch_size]]
            loss = loss_function(model, x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_loss = sum(
                loss_function(model, x) * len(x) for x in val.split(data["eval_batch_size"])
            ) / len(val)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        if val_loss < best:
            best = val_loss
            torch.save(state, args.out / "best.pt")
        torch.save(state, args.out / "last.pt")
        print(f"epoch {epoch} end {time.time():.6f}", flush=True)


if __name__ == "__main__":
    main()
