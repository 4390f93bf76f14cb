"""vae_lightning: a VAE trainer on PyTorch Lightning and Hydra."""

import time

# When the package was first imported: train.py's first line, the start of a run's `imports` phase
# (phases.py).
IMPORTED_AT = time.perf_counter()
