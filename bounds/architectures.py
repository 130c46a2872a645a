"""Built-in architectures for MNIST-1D (inputs [batch, 1, 40], ten classes).

Each factory is deterministic given torch's RNG, so `InitPrior(factory, seed)` can
regenerate its initialization; `width` is the size knob for sweeps.
"""

from __future__ import annotations

from torch import nn


def mnist1d_cnn(width: int = 32, classes: int = 10) -> nn.Sequential:
    """Three 1-D convolutions (kernel 5, then two stride-2 kernels 3) and a linear head.

    Parameters grow roughly as 6·width² + 100·width.
    """
    if width < 1:
        raise ValueError(f"width must be positive, got {width}")
    return nn.Sequential(
        nn.Conv1d(1, width, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.Conv1d(width, width, kernel_size=3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(width, width, kernel_size=3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(width * 10, classes),
    )


def mnist1d_mlp(width: int = 100, classes: int = 10) -> nn.Sequential:
    """A two-hidden-layer perceptron on the flattened 40-sample signal."""
    if width < 1:
        raise ValueError(f"width must be positive, got {width}")
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(40, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, classes),
    )
