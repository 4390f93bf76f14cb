"""Conditional accuracy, the standard check of a conditional generative model: a classifier
trained on the real training split classifies the images generated for each class, and the
fraction it puts in the class they were generated for is reported beside the classifier's own
accuracy on the real test images (the most the samples can be expected to reach)."""

from dataclasses import dataclass

import torch
from torch import nn

from vae_lightning.features import fashion_mnist_classifier, fashion_mnist_record


@dataclass(frozen=True)
class ConditionalAccuracy:
    """`per_class`: of the images generated for each class (by index, the classes that have
    any), the fraction classified as that class; `overall`: that fraction of all the images;
    `classifier_test_accuracy`: the classifier's on the real test images (None where unknown)."""

    per_class: dict[int, float]
    overall: float
    classifier_test_accuracy: float | None

    def metrics(self, class_names: tuple[str, ...]) -> dict[str, float]:
        """As metrics.json holds them: `conditional_accuracy`, one `conditional_accuracy/<class
        name>` per class and `classifier_test_accuracy`, where known."""
        metrics = {"conditional_accuracy": self.overall}
        for index, accuracy in self.per_class.items():
            metrics[f"conditional_accuracy/{class_names[index]}"] = accuracy
        if self.classifier_test_accuracy is not None:
            metrics["classifier_test_accuracy"] = self.classifier_test_accuracy
        return metrics


def conditional_accuracy(
    images: torch.Tensor,
    classes: torch.Tensor,
    classifier: nn.Module | None = None,
    classifier_test_accuracy: float | None = None,
    batch_size: int = 500,
) -> ConditionalAccuracy:
    """How often `classifier` (images in [0, 1] to class logits (N, K); None: the shipped
    Fashion-MNIST classifier, with its recorded test accuracy) puts `images` (N, C, H, W) in the
    class they were generated for, `classes` (N,); `batch_size` images at a time."""
    if classifier is None:
        classifier = fashion_mnist_classifier()
        classifier_test_accuracy = fashion_mnist_record()["test_accuracy"]
    classifier.eval()
    with torch.no_grad():
        predicted = torch.cat([classifier(part).argmax(dim=1) for part in images.split(batch_size)])
    right = (predicted == classes.to(predicted.device)).double().cpu()
    classes = classes.cpu()
    per_class = {c: right[classes == c].mean().item() for c in classes.unique().tolist()}
    return ConditionalAccuracy(per_class, right.mean().item(), classifier_test_accuracy)
