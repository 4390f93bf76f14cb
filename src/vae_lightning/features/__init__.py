"""Feature networks: images in [0, 1] (N, C, H, W) to feature vectors (N, d), the space in which
the sample-quality metrics (vae_lightning.sample_quality) compare generated and real images.

No machine here can download Inception's weights, so Fashion-MNIST and the shapes data each have
their own small classifier (SHIPPED), trained by tools/make_feature_network.py (on the real
training split; on rendered points of the factor grid) and shipped in this package with the
SHA-256 of its weights, so that every machine computes the same features. Their numbers are NOT
Inception FIDs: they compare only with numbers of the same network, and its test accuracy goes
beside each of them. Their classifications of the data's class serve the conditional-accuracy
check of conditional VAEs too. A user who has Inception weights loads them with
`inception_features`.
"""

import hashlib
import json
import zipfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file
from torch import nn

from vae_lightning.data.shapes import FACTOR_SIZES
from vae_lightning.errors import UserError

INCEPTION_SIZE = 299  # the input size Inception v3 was trained at


class DamagedWeightsError(UserError):
    """A shipped weights file whose SHA-256 is not the recorded one."""


class FeatureNetwork(nn.Module):
    """What the metrics need of a network: `forward` gives (N, num_features) features of images in
    [0, 1], `name` goes into the metrics' names (`fid_<name>`), and `test_accuracy` (None where
    not known) is reported beside them."""

    name: str
    num_features: int
    test_accuracy: float | None = None


def conv_body(image_size: int, num_features: int) -> nn.Sequential:
    """Three conv-ReLU-max-pool blocks of a grey image_size x image_size image (16, 32, 32
    channels) and a ReLU hidden layer of num_features units: the classifiers' features."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (image_size // 8) ** 2, num_features),
        nn.ReLU(),
    )


class FashionMNISTClassifier(nn.Module):
    """A small conv classifier of 28x28 grey images: conv_body's 128 features and the 10 class
    logits."""

    num_features = 128

    def __init__(self):
        super().__init__()
        self.body = conv_body(28, self.num_features)
        self.head = nn.Linear(self.num_features, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The hidden layer's (N, 128) activations of images in [0, 1] (N, 1, 28, 28)."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The (N, 10) class logits."""
        return self.head(self.features(images))

    def class_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The data's class (the conditional accuracy's): all there is."""
        return self(images)


class ShapesFactorClassifier(nn.Module):
    """A small conv classifier of the shapes data's 32x32 images (vae_lightning.data.shapes):
    conv_body's 128 features and one head of logits per factor (shape, scale, rotation, x, y),
    so that the features see every factor, not only the shape."""

    num_features = 128

    def __init__(self):
        super().__init__()
        self.body = conv_body(32, self.num_features)
        self.heads = nn.ModuleList(nn.Linear(self.num_features, size) for size in FACTOR_SIZES)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The hidden layer's (N, 128) activations of images in [0, 1] (N, 1, 32, 32)."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each factor's (N, grid size) logits, in the order of FACTOR_NAMES."""
        features = self.features(images)
        return tuple(head(features) for head in self.heads)

    def class_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The data's class (the conditional accuracy's): the shape, the first factor."""
        return self.heads[0](self.features(images))


class ClassifierFeatures(FeatureNetwork):
    """A classifier's hidden-layer features, as a FeatureNetwork."""

    def __init__(self, classifier: nn.Module, name: str, test_accuracy: float):
        super().__init__()
        self.classifier = classifier.eval()
        self.name, self.num_features = name, classifier.num_features
        self.test_accuracy = test_accuracy

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class ShippedNetwork:
    """A classifier shipped in this package for one data set: `<data>.safetensors`, its weights,
    and `<data>.json`, the record tools/make_feature_network.py wrote with them (the test
    accuracy of the class, seed, command, SHA-256)."""

    data: str  # the data config's name (data.name), and the files' stem
    features_name: str  # in the metrics' names: fid_<features_name>
    image_shape: tuple[int, int, int]  # the only shape it was trained at
    network: type[nn.Module]

    @property
    def weights(self) -> Path:
        return Path(str(files(__package__) / f"{self.data}.safetensors"))

    @property
    def record_path(self) -> Path:
        return self.weights.with_suffix(".json")

    def record(self) -> dict:
        return json.loads(self.record_path.read_text())

    def classifier(self, weights: Path | None = None) -> nn.Module:
        """The classifier in eval mode, after checking that its weights file (default: the
        shipped one) has the recorded SHA-256 (safetensors: loading it runs no code)."""
        weights = weights or self.weights
        expected, found = self.record()["sha256"], sha256_of(weights)
        if found != expected:
            raise DamagedWeightsError(
                f"{weights} has SHA-256 {found}, not the {expected} recorded in "
                f"{self.record_path}: the file was changed; reinstall vae-lightning, or rerun "
                f"tools/make_feature_network.py --data {self.data} to make both anew"
            )
        classifier = self.network()
        classifier.load_state_dict(load_file(weights))
        return classifier.eval()

    def features(self) -> ClassifierFeatures:
        """The classifier's features, with the recorded test accuracy of the class."""
        return ClassifierFeatures(
            self.classifier(), self.features_name, self.record()["test_accuracy"]
        )


FASHION_MNIST = ShippedNetwork(
    "fashion_mnist", "fmnist_features", (1, 28, 28), FashionMNISTClassifier
)
SHAPES = ShippedNetwork("shapes", "shapes_features", (1, 32, 32), ShapesFactorClassifier)
SHIPPED = {network.data: network for network in (FASHION_MNIST, SHAPES)}


def shipped_data() -> str:
    """The data sets with a shipped network, at their shapes, in words."""
    return ", ".join(
        f"{network.data} at {'x'.join(map(str, network.image_shape))}"
        for network in SHIPPED.values()
    )


def shipped_features(data_name: str, image_shape) -> FeatureNetwork | None:
    """The package's feature network of a data set at the shape it was trained on; None for
    other data or shapes."""
    network = SHIPPED.get(data_name)
    if network is None or network.image_shape != tuple(image_shape):
        return None
    return network.features()


class InceptionFeatures(FeatureNetwork):
    """The 2048 pool features of an Inception v3 that a user provides, named
    `inception_features`. Grey images are repeated to three channels and every image is resized
    to 299x299 (bilinearly, as pytorch-fid does); torchvision's network then gets them in
    [-1, 1], the range the original weights were trained on, and a TorchScript module gets them in
    [0, 1] (pytorch-fid's InceptionV3 scales them itself)."""

    name = "inception_features"

    def __init__(self, network: nn.Module, scripted: bool):
        super().__init__()
        self.network, self.scripted = network.eval(), scripted
        self.num_features = 2048

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        images = F.interpolate(
            images, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False
        )
        if not self.scripted:
            return self.network(2 * images - 1)
        features = self.network(images)
        if isinstance(features, list | tuple):  # pytorch-fid: one (N, d, 1, 1) map per block
            features = features[-1]
        return features.flatten(start_dim=1)


def inception_features(path: str | Path) -> InceptionFeatures:
    """An Inception v3 from a user's file: a TorchScript module (pytorch-fid's FID Inception
    scripted or traced: images in [0, 1] to (N, 2048) features or a list ending with
    (N, 2048, 1, 1)), or a state_dict of torchvision's `inception_v3` (torch.save'd, read with
    weights_only, or .safetensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Inception weights file at {path}")
    if zipfile.is_zipfile(path):
        # A TorchScript archive holds its code; a torch.save'd state_dict does not.
        with zipfile.ZipFile(path) as archive:
            scripted = any("/code/" in name for name in archive.namelist())
        if scripted:
            return InceptionFeatures(torch.jit.load(path, map_location="cpu"), scripted=True)
    if path.suffix == ".safetensors":
        state_dict = load_file(path)
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    network = torchvision.models.inception_v3(
        weights=None,
        aux_logits=any(key.startswith("AuxLogits.") for key in state_dict),
        transform_input=False,
        init_weights=False,
    )
    network.load_state_dict(state_dict)
    network.fc = nn.Identity()  # the pooled 2048 features, not the ImageNet logits
    return InceptionFeatures(network, scripted=False)
