"""Training a causal language model on a token corpus, reproducibly.

Each step draws `batch_size` windows of `context` + 1 tokens: a document with probability
proportional to its scored tokens, then a start position uniform over the document's tokens
but its last (so every scored token can be a window's first target). Windows never cross a
document's end; short windows are padded and the padding is left out of the loss. The loss
is the mean next-token cross-entropy; AdamW with the cosine step size of bounds.training.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .progress import progress_bar
from .training import _check_positive, step_size

IGNORE = -100  # the target id cross_entropy leaves out


def sample_windows(corpus, context: int, count: int, rng: np.random.Generator) -> torch.Tensor:
    """[count, context + 1] token ids of random windows; padding targets are IGNORE."""
    lengths = corpus.ends - corpus.starts
    documents = rng.choice(len(lengths), size=count, p=(lengths - 1) / (lengths - 1).sum())
    starts = corpus.starts[documents] + rng.integers(0, lengths[documents] - 1)
    stops = np.minimum(starts + context + 1, corpus.ends[documents])
    windows = np.full((count, context + 1), IGNORE, dtype=np.int64)
    for row, (start, stop) in enumerate(zip(starts, stops, strict=True)):
        windows[row, : stop - start] = corpus.tokens[start:stop]
    return torch.from_numpy(windows)


def train_language_model(
    model: nn.Module,
    corpus,
    *,
    context: int,
    steps: int,
    lr: float,
    batch_size: int = 32,
    weight_decay: float = 0.0,
    seed: int = 0,
    quiet: bool = True,
) -> list[float]:
    """Minimise the next-token cross-entropy of `model` on `corpus`; return each step's loss.

    The window order comes from a generator seeded with `seed`, so the same model, corpus and
    seed give the same weights on the same machine and torch build.
    """
    for name, value in (("context", context), ("steps", steps), ("batch_size", batch_size)):
        _check_positive(name, value, integer=True)
    _check_positive("lr", lr)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no parameters that require grad")
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    losses = []
    model.train()
    with progress_bar("training", steps, quiet) as bar:
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = step_size(lr, step, steps, "cosine")
            windows = sample_windows(corpus, context, batch_size, rng)
            inputs = windows[:, :-1].clamp(min=0)  # padding positions only feed masked targets
            logits = model(inputs)
            logits = getattr(logits, "logits", logits)
            targets = windows[:, 1:].reshape(-1)
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets, ignore_index=IGNORE
            )
            if not torch.isfinite(loss):
                raise ValueError(f"the training loss became {loss.item()} at step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.advance(1)
    model.eval()
    return losses
