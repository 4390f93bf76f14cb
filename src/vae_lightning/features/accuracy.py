"""Conditional accuracy, the standard check of a conditional generative model: a classifier
trained on the real training split classifies the images generated for each class, and the
fraction it puts in the class they were generated for is reported beside the classifier's own
accuracy on the real test images (the most the samples can be expected to reach)."""

from dataclasses import dataclass

import torch

from vae_lightning.features import FASHION_MNIST, ShippedNetwork


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
    network: ShippedNetwork = FASHION_MNIST,
    batch_size: int = 500,
) -> ConditionalAccuracy:
    """How often the shipped classifier of a data set (its class: Fashion-MNIST's label, the
    shapes' shape) puts `images` (N, C, H, W) in [0, 1] in the class they were generated for,
    `classes` (N,), `batch_size` images at a time, beside its recorded test accuracy."""
    classifier = network.classifier().to(images.device)
    with torch.no_grad():
        predicted = torch.cat(
            [classifier.class_logits(part).argmax(dim=1) for part in images.split(batch_size)]
        )
    right = (predicted == classes.to(predicted.device)).double().cpu()
    classes = classes.cpu()
    per_class = {c: right[classes == c].mean().item() for c in classes.unique().tolist()}
    return ConditionalAccuracy(per_class, right.mean().item(), network.record()["test_accuracy"])
