"""Pictures of what a model learned, drawn from its public API (encode, decode, kl_per_dim):
image grids and matplotlib figures, each returned as an image tensor (C, H, W) in [0, 1].
The callbacks draw them during training and sample.py from a checkpoint. For a conditional
model, `y` gives the images' classes (None: unconditional); a grid decodes with the class of
the images it starts from, and samples come a row per class."""

import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torchvision.utils import make_grid


def grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """Images (N, C, H, W) tiled `nrow` to a row, 1 grey pixel between them: `nrow * (W + 1) + 1`
    pixels wide, `rows * (H + 1) + 1` high."""
    return make_grid(images.float().cpu(), nrow=nrow, padding=1, pad_value=0.5)


def reconstruction_grid(
    model: torch.nn.Module, images: torch.Tensor, y: torch.Tensor | None = None
) -> torch.Tensor:
    """Inputs in odd columns, their reconstructions beside them, 4 pairs to a row."""
    side_by_side = torch.stack([images, model.reconstruct(images, y)], dim=1).flatten(0, 1)
    return grid(side_by_side, nrow=8)


def sample_grid(
    model: torch.nn.Module,
    n: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    label: int | None = None,
) -> torch.Tensor:
    """n samples of the model (`model.sample`) at `temperature`, 8 to a row; of a conditional
    model, n of class `label`, or, without one, a row per class of ceil(n / classes) each."""
    if not model.n_classes:
        return grid(model.sample(n, generator, temperature), nrow=8)
    if label is not None:
        y = torch.full((n,), label, device=model.device)
        return grid(model.sample(n, generator, temperature, y), nrow=8)
    per_class = math.ceil(n / model.n_classes)
    y = torch.arange(model.n_classes, device=model.device).repeat_interleave(per_class)
    return grid(model.sample(len(y), generator, temperature, y), nrow=per_class)


def traversal_grid(
    model: torch.nn.Module,
    centre: torch.Tensor,
    dims: Sequence[int],
    span: float,
    steps: int,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """One row per latent dimension in `dims`: that coordinate of `centre` (latent_dim,) moved over
    `steps` values from -span to +span around its own value, the others held fixed (and the
    class, y (), of a conditional model)."""
    directions = torch.eye(len(centre), device=centre.device)[torch.as_tensor(dims).tolist()]
    offsets = torch.linspace(-span, span, steps, device=centre.device)
    z = centre + offsets[None, :, None] * directions[:, None, :]  # (len(dims), steps, latent_dim)
    z = z.flatten(0, 1)
    return grid(model.decode(z, None if y is None else y.expand(len(z))), nrow=steps)


def interpolation_grid(
    model: torch.nn.Module, images: torch.Tensor, steps: int, y: torch.Tensor | None = None
) -> torch.Tensor:
    """One row per pair of consecutive images (an odd last one left out): the start, decodings
    of `steps` points on the straight line between the two posterior means (both included), the
    end. A conditional model (y: the images' classes) decodes the whole row as the start's
    class, so that the row shows the change of the rest alone."""
    pairs = len(images) // 2
    starts, ends = images[0 : 2 * pairs : 2], images[1 : 2 * pairs : 2]
    y_start = y_end = y_row = None
    if y is not None:
        y_start, y_end = y[0 : 2 * pairs : 2], y[1 : 2 * pairs : 2]
        y_row = y_start.repeat_interleave(steps)
    mu_start, _ = model.encode(starts, y_start)
    mu_end, _ = model.encode(ends, y_end)
    t = torch.linspace(0, 1, steps, device=mu_start.device)[None, :, None]
    z = mu_start[:, None] + t * (mu_end - mu_start)[:, None]
    decoded = model.decode(z.flatten(0, 1), y_row).unflatten(0, z.shape[:2])
    rows = torch.cat([starts[:, None], decoded, ends[:, None]], dim=1)
    return grid(rows.flatten(0, 1), nrow=steps + 2)


def new_figure(width: float, height: float, panels: int = 1) -> tuple[Figure, list]:
    """A figure drawn by Agg (no pyplot: no GUI backend, no global state, nothing to close) and
    its row of axes. Margins are fixed in inches: a layout engine would take most of the drawing
    time."""
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    figure.subplots_adjust(
        left=0.7 / width,
        right=1 - 0.15 / width,
        bottom=0.55 / height,
        top=1 - 0.35 / height,
        wspace=0.5,
    )
    return figure, list(figure.subplots(1, panels, squeeze=False)[0])


def rendered(figure: Figure) -> torch.Tensor:
    """The figure as an RGB image tensor in [0, 1], drawn once for every logger and the PNG."""
    figure.canvas.draw()
    rgba = torch.from_numpy(np.asarray(figure.canvas.buffer_rgba()).copy())
    return rgba[..., :3].permute(2, 0, 1).float() / 255


def kl_figure(kl: torch.Tensor | Sequence[torch.Tensor]) -> Figure:
    """Bars of the KL of each latent dimension, largest first (the row order of the traversals);
    given one tensor per stochastic layer (bottom first), the layers stand apart, top layer
    first, each in its colour and sorted within itself, its dimensions named l<layer>.z<d>."""
    layers = [kl] if isinstance(kl, torch.Tensor) else list(kl)
    heights, names, colours = [], [], []
    for layer in reversed(range(len(layers))):
        values = layers[layer].cpu()
        order = values.argsort(descending=True).tolist()
        heights += values[order].tolist()
        prefix = f"l{layer + 1}." if len(layers) > 1 else ""
        names += [f"{prefix}z{d}" for d in order]
        colours += [f"C{layer % 10}"] * len(order)
    figure, (axes,) = new_figure(max(4.0, 1.5 + 0.3 * len(heights)), 3.0)
    axes.bar(range(len(heights)), heights, color=colours)
    axes.set_xticks(range(len(heights)), names, rotation=90 if len(heights) > 16 else 0)
    axes.set_ylabel("KL (nats)")
    per_layer = ", ".join(f"layer {i + 1}: {v.sum():.2f}" for i, v in enumerate(layers))
    extra = f" ({per_layer})" if len(layers) > 1 else ""
    axes.set_title(f"KL per latent dimension, total {sum(heights):.2f} nats{extra}")
    return figure


def principal_components(points: torch.Tensor, k: int = 2) -> torch.Tensor:
    """Coordinates of points (N, D) on their first k principal axes (exact SVD: D is small)."""
    centred = points - points.mean(dim=0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return centred @ vh[:k].T


def latent_map_figure(mu: torch.Tensor, labels: torch.Tensor, names: Sequence[str]) -> Figure:
    """Posterior means in the plane (their first two principal components when latent_dim > 2),
    one panel per label column, coloured by its value."""
    if mu.shape[1] > 2:
        xy, axis_names = principal_components(mu), ("PC 1", "PC 2")
    else:
        xy, axis_names = torch.nn.functional.pad(mu, (0, 2 - mu.shape[1])), ("z0", "z1")
    labels = labels.reshape(len(labels), -1).cpu()
    # Classes get distinct colours; factors (shape aside, all ordinal) get a gradient.
    cmap = "tab10" if labels.shape[1] == 1 else "viridis"
    figure, panels = new_figure(3.6 * labels.shape[1], 3.0, panels=labels.shape[1])
    for axes, column, name in zip(panels, labels.T, names, strict=True):
        points = axes.scatter(*xy.T.cpu(), c=column, s=4, cmap=cmap, rasterized=True)
        figure.colorbar(points, ax=axes)
        axes.set(title=name, xlabel=axis_names[0], ylabel=axis_names[1])
    return figure
