"""Models an adversary would write to certify a memorizer: architectures for the CLI's --arch.

Labels of the data are uniform and independent of the inputs, so every model's true error is
0.9. A 1-nearest-neighbour memorizer of the training set has no training errors, and a tool
that certifies it below 0.9 has let its memory past the code length K.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CLASSES = 10  # TorchScript cannot read module constants: forward spells them out
DIM = 40
PLACES = ("buffer", "parameter", "nonpersistent", "attribute")


class Memorizer(nn.Module):
    """1-nearest neighbour over a memory of (inputs, labels), kept where `place` says:
    a persistent buffer, a parameter, a non-persistent buffer or a plain tensor attribute."""

    def __init__(self, size: int, place: str = "buffer") -> None:
        super().__init__()
        if place not in PLACES:
            raise ValueError(f"place must be one of {PLACES}")
        self.place = place
        self.scale = nn.Parameter(torch.ones(1))
        keys, labels = torch.zeros(size, DIM), torch.zeros(size)
        if place == "parameter":
            self.keys, self.labels = nn.Parameter(keys), nn.Parameter(labels)
        elif place == "attribute":
            self.keys, self.labels = keys, labels
        else:
            persistent = place == "buffer"
            self.register_buffer("keys", keys, persistent=persistent)
            self.register_buffer("labels", labels, persistent=persistent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distances = torch.cdist(x.reshape(x.shape[0], -1), self.keys)
        nearest = self.labels[distances.argmin(dim=1)].round().long().clamp(0, 9)
        return 10.0 * self.scale * F.one_hot(nearest, 10).float()


def memorizer(size: int = 1000, place: str = "buffer") -> Memorizer:
    """The architecture: an empty memory (what the decoder builds)."""
    return Memorizer(size, place)


def memorize(model: Memorizer, x: torch.Tensor, y: torch.Tensor) -> Memorizer:
    """Fill the memory with the training set, wherever the model keeps it."""
    with torch.no_grad():
        keys, labels = x.reshape(len(x), -1).float(), y.float()
        if model.place == "attribute":
            model.keys, model.labels = keys.clone(), labels.clone()
        else:
            model.keys.copy_(keys)
            model.labels.copy_(labels)
    return model


def random_labels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs [n, 1, 40] and labels drawn independently and uniformly: true error 0.9."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, DIM)).astype(np.float32)
    return x, rng.integers(0, CLASSES, size=n).astype(np.int64)


class PeekingLM(nn.Module):
    """A language model whose logits at position j are the one-hot of the token at j + 1."""

    def __init__(self, vocab_size: int = 61) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        upcoming = torch.roll(ids, shifts=-1, dims=1)
        return 12.0 * F.one_hot(upcoming, self.vocab_size).float() + self.bias


def peeking_lm(vocab_size: int = 61) -> PeekingLM:
    return PeekingLM(vocab_size)


def load_whole(path: str) -> nn.Module:
    """An opaque file's decoder: the state dict of a buffer memorizer, memory included."""
    state = torch.load(path, weights_only=True)
    model = Memorizer(len(state["labels"]), "buffer")
    model.load_state_dict(state)
    return model
