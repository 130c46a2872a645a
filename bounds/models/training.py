"""Training loops: classifiers (`train_classifier`) and causal LMs (`train_language_model`).

Small, deterministic trainers for the built-in examples and demos: the same model, data and
`seed` give the same weights (on the same machine and torch build). Only parameters with
``requires_grad`` are trained, so for a `quantize.Subspace` that is just its coordinates w.

Optimizer: AdamW (Loshchilov & Hutter 2019, "Decoupled weight decay regularization"), which is
Adam (Kingma & Ba 2015) when ``weight_decay = 0``. Schedule ``"cosine"``: the step size at step
t of T is lr·(1 + cos(π t/T))/2 (Loshchilov & Hutter 2017, SGDR, without restarts);
``"constant"``: lr throughout.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from bounds.reports.progress import progress_bar

SCHEDULES = ("cosine", "constant")


def _tensors(data) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and integer labels of a TensorDataset or of a pair (x, y)."""
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        inputs, labels = data.tensors
    elif isinstance(data, tuple) and len(data) == 2:
        inputs, labels = torch.as_tensor(data[0]), torch.as_tensor(data[1])
    else:
        raise ValueError(
            f"data must be a TensorDataset (inputs, labels) or a pair (x, y), got {type(data)}"
        )
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError("labels must be a 1-D tensor of integer class indices")
    if len(inputs) != len(labels) or len(labels) == 0:
        raise ValueError(
            f"need as many inputs as labels, and at least one: {len(inputs)} vs {len(labels)}"
        )
    return inputs, labels.long()


def _check_outputs(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> None:
    """One forward pass in eval mode (so no state changes): [batch, classes] logits that
    cover every label, else ValueError."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(inputs[:1])
    except (RuntimeError, TypeError, ValueError) as error:
        first = (str(error).strip() or repr(error)).splitlines()[0]
        raise ValueError(
            f"the model rejects inputs of shape {tuple(inputs.shape)}: {first}"
        ) from None
    finally:
        model.train(was_training)
    if logits.ndim != 2 or logits.shape[0] != 1:
        raise ValueError(f"the model must return [batch, classes] logits, got {logits.shape}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= logits.shape[1]:
        raise ValueError(
            f"labels must be in [0, {logits.shape[1]}) for a model with {logits.shape[1]} "
            f"outputs, got labels from {low} to {high}"
        )


def _check_positive(name: str, value: float, *, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
        raise ValueError(f"{name} must be a positive {'int' if integer else 'number'}: {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")


def step_size(lr: float, step: int, total_steps: int, schedule: str) -> float:
    """The learning rate at `step` (0-based) of `total_steps` under `schedule`."""
    if schedule == "constant":
        return lr
    return 0.5 * lr * (1.0 + math.cos(math.pi * step / total_steps))


def train_classifier(
    model: nn.Module,
    data,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    seed: int = 0,
    quiet: bool = True,
    schedule: str = "cosine",
) -> list[float]:
    """Minimise the mean cross-entropy of `model` on `data`; return each epoch's mean loss.

    `data` is a TensorDataset (inputs, labels) or a pair (x, y) on the model's device. Every
    epoch visits the examples once in an order drawn from a generator seeded with `seed`
    (the last mini-batch may be smaller). The model is left in the train/eval mode it had.
    Raises ValueError for bad arguments, labels the model's outputs do not cover, a model
    with nothing to train, or a non-finite loss.
    """
    _check_positive("epochs", epochs, integer=True)
    _check_positive("batch_size", batch_size, integer=True)
    _check_positive("lr", lr)
    if isinstance(weight_decay, bool) or not (
        isinstance(weight_decay, (int, float)) and 0 <= weight_decay < math.inf
    ):
        raise ValueError(f"weight_decay must be a finite number ≥ 0, got {weight_decay!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int ≥ 0, got {seed!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    inputs, labels = _tensors(data)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no parameters that require grad")

    _check_outputs(model, inputs, labels)

    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    order = torch.Generator(device="cpu").manual_seed(seed)
    n = len(labels)
    steps_per_epoch = -(-n // batch_size)
    total_steps = epochs * steps_per_epoch
    was_training = model.training
    model.train()
    epoch_losses = []
    with progress_bar("training", total_steps, quiet) as steps:
        for epoch in range(epochs):
            permutation = torch.randperm(n, generator=order)
            loss_sum = 0.0
            for batch in range(steps_per_epoch):
                for group in optimizer.param_groups:
                    group["lr"] = step_size(
                        lr, epoch * steps_per_epoch + batch, total_steps, schedule
                    )
                index = permutation[batch * batch_size : (batch + 1) * batch_size]
                loss = nn.functional.cross_entropy(model(inputs[index]), labels[index])
                if not torch.isfinite(loss):
                    raise ValueError(
                        f"the training loss became {loss.item()} in epoch {epoch + 1}; "
                        "try a smaller learning rate"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(index)
                steps.advance(1)
            epoch_losses.append(loss_sum / n)
    model.train(was_training)
    return epoch_losses


# --- language models -------------------------------------------------------------------
#
# Training a causal language model on a token corpus, reproducibly.
#
# Each step draws `batch_size` windows of `context` + 1 tokens: a document with probability
# proportional to its scored tokens, then a start position uniform over the document's tokens
# but its last (so every scored token can be a window's first target). Windows never cross a
# document's end; short windows are padded and the padding is left out of the loss. The loss
# is the mean next-token cross-entropy; AdamW with the cosine step size of bounds.models.training.

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
