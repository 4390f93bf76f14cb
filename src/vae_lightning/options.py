"""The options of the config's choice keys, and the image sizes the conv network can halve.

They live here, not beside the code that uses them, because that code imports torch (so do the
objectives/ and data/ packages on import) while config.py checks a command line against them
before torch is imported, to refuse a bad command in well under torch's own import time."""

from importlib.resources import files
from typing import Any

from omegaconf import OmegaConf

METRICS = ("beta_vae", "factor_vae", "mig", "sap", "dci")  # disentanglement.py
DCI_REGRESSORS = ("gbt", "lasso")  # disentanglement.py: DCI's importance regressor
UNREADABLE = ("skip", "stop")  # data/images.py: what to do with a file that cannot be decoded


def conv_downsampling(image_shape: tuple[int, int, int], n_layers: int) -> tuple[int, int]:
    """The (H, W) after n stride-2 layers; each layer halves exactly, so both must divide."""
    _, height, width = image_shape
    factor = 2**n_layers
    if height % factor or width % factor:
        raise ValueError(
            f"a conv network with {n_layers} stride-2 layers needs height and width divisible by "
            f"{factor}, got {height}x{width}"
        )
    return height // factor, width // factor


def part_config(part: str, option: str) -> dict[str, Any]:
    """conf/model/<part>/<option>.yaml as a plain dict: a part's config as conf/ gives it."""
    path = files("vae_lightning.conf").joinpath("model", part, f"{option}.yaml")
    return OmegaConf.to_container(OmegaConf.load(str(path)))
