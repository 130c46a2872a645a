"""A stand-in for your own project: a model factory and a data function for the CLI.

`bounds compute` builds the model with `--arch my_project:make_model:hidden=64` and loads
the data with `--data my_project:training_data` (run from this folder, or put the module on
PYTHONPATH). See examples/bring_your_own.py for the whole round trip.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


def make_model(hidden: int = 64) -> nn.Module:
    """A two-layer perceptron on 2-D points, two classes."""
    return nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 2))


def _two_moons(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=generator)
    angle = torch.rand(n, generator=generator) * torch.pi
    x = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    x[labels == 1] = x[labels == 1] * torch.tensor([1.0, -1.0]) + torch.tensor([1.0, 0.5])
    x = x + 0.15 * torch.randn(n, 2, generator=generator)
    return TensorDataset(x, labels)


def training_data(n: int = 5000) -> TensorDataset:
    """n i.i.d. points of the two-moons problem (seed 0)."""
    return _two_moons(n, seed=0)


def test_data(n: int = 2000) -> TensorDataset:
    """Held-out points from the same distribution (another seed)."""
    return _two_moons(n, seed=1)
