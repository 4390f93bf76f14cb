"""The classes of the labelled data sets: their names, a user's label (an index or a name) as a
class index, and the balanced subset of labels that semi-supervised training keeps
(`data.labelled`)."""

import re
from collections.abc import Sequence

import torch

from vae_lightning.errors import ConfigError

# The class names of the sets that have them, in the order of their label indices (torchvision's).
CLASS_NAMES = {
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion_mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "kmnist": ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    "cifar10": (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
}

UNLABELLED = -1  # the label of a training image whose label data.labelled hides


def normalised(name: str) -> str:
    """A class name as it is matched: lower case, each run of other characters than letters and
    digits one space, so that "ankle_boot" is "Ankle boot" and "t-shirt_top" is "T-shirt/top"."""
    return " ".join(re.split(r"[^0-9a-z]+", name.lower())).strip()


def class_index(label: int | str, class_names: Sequence[str], key: str = "label") -> int:
    """The index of the class a user names by `label`: its index (an integer) or its name, any
    case, with "_" or "-" for a space or "/" (see `normalised`). Otherwise a ConfigError for
    `key` that lists the names."""
    if isinstance(label, int) and not isinstance(label, bool):
        if 0 <= label < len(class_names):
            return label
    elif isinstance(label, str):
        by_name = {normalised(name): index for index, name in enumerate(class_names)}
        if normalised(label) in by_name:
            return by_name[normalised(label)]
    raise ConfigError(
        key,
        label,
        f"a class index 0..{len(class_names) - 1} or one of its names: {', '.join(class_names)}",
    )


def balanced_subset(
    classes: torch.Tensor, n_labelled: int, class_names: Sequence[str], seed: int
) -> torch.Tensor:
    """Indices (sorted) of `n_labelled` of the images whose class indices are `classes`, as many
    of each class: n_labelled // n_classes, and one more for each of the first
    n_labelled % n_classes classes, so that any number can be asked for. Which images of a class
    are kept is drawn with `seed`: the same for a seed. A ConfigError for data.labelled when
    there are fewer images than labels asked for, fewer labels than classes, or too few images of
    a class."""
    n_classes = len(class_names)
    if not n_classes <= n_labelled <= len(classes):
        raise ConfigError(
            "data.labelled",
            n_labelled,
            f"at least one label per class ({n_classes}) and at most the {len(classes)} "
            "training images, or null for every label",
        )
    per_class, remainder = divmod(n_labelled, n_classes)
    # One permutation of every image, then each class's first images in it: each class's choice
    # is a uniform draw, the same for a seed whatever the other classes hold.
    order = torch.randperm(len(classes), generator=torch.Generator().manual_seed(seed))
    chosen = []
    for index, name in enumerate(class_names):
        count = per_class + (index < remainder)
        members = order[classes[order] == index]
        if len(members) < count:
            raise ConfigError(
                "data.labelled",
                n_labelled,
                f"fewer balanced labels: class {name} has only {len(members)} training images, "
                f"not the {count} labels it would get",
            )
        chosen.append(members[:count])
    return torch.cat(chosen).sort().values
