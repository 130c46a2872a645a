"""Built-in architectures: for MNIST-1D (inputs [batch, 1, 40], ten classes) and a small
causal transformer for token sequences.

Each factory is deterministic given torch's RNG, so `InitPrior(factory, seed)` can
regenerate its initialization; `width` is the size knob for sweeps. Each network it builds
names the spec that rebuilds it (`declare`), so the decoder can build the evaluated model
without being told the architecture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def declare(network: nn.Module, factory: str, **options: object) -> nn.Module:
    """Record on `network` the spec ``bounds.models.architectures:factory:options`` that
    rebuilds it."""
    from bounds.pipeline.decoder import SPEC_ATTRIBUTE

    text = ",".join(f"{key}={value!r}" for key, value in options.items())
    setattr(network, SPEC_ATTRIBUTE, f"{__name__}:{factory}" + (f":{text}" if text else ""))
    return network


def mnist1d_cnn(width: int = 32, classes: int = 10) -> nn.Sequential:
    """Three 1-D convolutions (kernel 5, then two stride-2 kernels 3) and a linear head.

    Parameters grow roughly as 6·width² + 100·width.
    """
    if width < 1:
        raise ValueError(f"width must be positive, got {width}")
    network = nn.Sequential(
        nn.Conv1d(1, width, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.Conv1d(width, width, kernel_size=3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(width, width, kernel_size=3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(width * 10, classes),
    )
    return declare(network, "mnist1d_cnn", width=width, classes=classes)


def mnist1d_mlp(width: int = 100, classes: int = 10) -> nn.Sequential:
    """A two-hidden-layer perceptron on the flattened 40-sample signal."""
    if width < 1:
        raise ValueError(f"width must be positive, got {width}")
    network = nn.Sequential(
        nn.Flatten(),
        nn.Linear(40, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, classes),
    )
    return declare(network, "mnist1d_mlp", width=width, classes=classes)


def byte_transformer(
    vocab_size: int = 257,
    context: int = 256,
    width: int = 64,
    depth: int = 2,
    heads: int = 4,
    seed: int | None = None,
) -> nn.Module:
    """A small causal decoder-only transformer: long ids [B, T] (T ≤ context) → logits [B, T, V].

    Token and learned position embeddings, `depth` pre-LayerNorm blocks (causal multi-head
    attention, GELU MLP of 4·width), a final LayerNorm and an untied linear head. Weights are
    drawn from N(0, 0.02²) (biases 0) with torch's RNG, or from `seed` without touching it.
    The default vocabulary is the 256 byte values plus one end-of-document id.
    """
    for name, value in (("vocab_size", vocab_size), ("context", context), ("width", width)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if depth < 0:
        raise ValueError(f"depth must be non-negative, got {depth}")
    if heads < 1 or width % heads:
        raise ValueError(f"heads must be a positive divisor of width {width}, got {heads}")
    options = dict(vocab_size=vocab_size, context=context, width=width, depth=depth, heads=heads)
    if seed is None:
        network = _CausalTransformer(**options)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = _CausalTransformer(**options)
    return declare(network, "byte_transformer", **options)


class _CausalBlock(nn.Module):
    """x + attention(LN(x)), then x + MLP(LN(x)) (pre-LayerNorm residual block)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.attention_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = (
            part.view(batch, length, self.heads, width // self.heads).transpose(1, 2)
            for part in self.qkv(self.attention_norm(x)).chunk(3, dim=-1)
        )
        mixed = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(mixed.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.mlp_norm(x))


class _CausalTransformer(nn.Module):
    def __init__(self, vocab_size: int, context: int, width: int, depth: int, heads: int):
        super().__init__()
        self.context = context
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(_CausalBlock(width, heads) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2 or ids.dtype != torch.long:
            raise ValueError(
                f"expected long token ids [batch, length], got {ids.dtype} {tuple(ids.shape)}"
            )
        if ids.shape[1] > self.context:
            raise ValueError(f"{ids.shape[1]} tokens exceed the context of {self.context}")
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.token_embedding(ids) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.final_norm(x))
