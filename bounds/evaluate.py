"""Counting a classifier's errors on a dataset, exactly and reproducibly."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .progress import progress_bar


@dataclass(frozen=True)
class Evaluation:
    """Errors (0-1 loss) and summed cross-entropy (nats) of a model on n examples."""

    n: int
    errors: int
    loss_sum: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.n

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.n


def as_loader(data, batch_size: int = 1024) -> DataLoader:
    """A non-shuffling DataLoader over a Dataset, a DataLoader, or a pair of tensors (x, y)."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        data = TensorDataset(torch.as_tensor(data[0]), torch.as_tensor(data[1]))
    if not isinstance(data, Dataset):
        raise ValueError(f"data must be a Dataset, a DataLoader or a pair (x, y), got {type(data)}")
    return DataLoader(data, batch_size=batch_size, shuffle=False)


def dataset_size(data) -> int:
    """Number of examples in `data`; an empty dataset is an error."""
    loader = as_loader(data)
    try:
        size = len(loader.dataset)
    except TypeError:
        raise ValueError("the dataset must have a length (an iterable dataset has none)") from None
    if size == 0:
        raise ValueError("the dataset is empty")
    return size


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data,
    *,
    device: str = "cpu",
    batch_size: int = 1024,
    quiet: bool = True,
    description: str = "evaluating",
) -> Evaluation:
    """Count argmax errors and sum the cross-entropy of `model` over every example of `data`.

    Labels must be integers in [0, C) for a model with C outputs; the model must accept the
    inputs. Each violation raises ValueError naming it.
    """
    loader = as_loader(data, batch_size)
    n = dataset_size(loader)
    if any(t.device != torch.device(device) for t in [*model.parameters(), *model.buffers()]):
        model = model.to(device)
    model.eval()
    errors, loss_sum, seen = 0, 0.0, 0
    with progress_bar(description, n, quiet) as steps:
        for batch in loader:
            if not isinstance(batch, list | tuple) or len(batch) != 2:
                raise ValueError("each batch of the data must be a pair (inputs, labels)")
            inputs, labels = batch[0].to(device), batch[1].to(device)
            try:
                logits = model(inputs)
            except (RuntimeError, TypeError, ValueError) as error:
                first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
                shape = tuple(inputs.shape)
                raise ValueError(f"the model rejects inputs of shape {shape}: {first}") from None
            _check_labels(labels, logits, seen)
            logits = logits.double()
            errors += int((logits.argmax(dim=-1) != labels).sum())
            loss = torch.nn.functional.cross_entropy(logits, labels.long(), reduction="sum")
            loss_sum += float(loss)
            seen += len(labels)
            steps.advance(len(labels))
    if seen != n:
        raise ValueError(f"the data yielded {seen} examples but reports a length of {n}")
    return Evaluation(n=n, errors=errors, loss_sum=loss_sum)


def _check_labels(labels: torch.Tensor, logits: torch.Tensor, offset: int) -> None:
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"the model must map a batch of {labels.shape[0]} inputs to [batch, classes] "
            f"logits, got shape {tuple(logits.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.ndim != 1:
        raise ValueError("labels must be a 1-D tensor of integer class indices")
    classes = logits.shape[1]
    bad = (labels < 0) | (labels >= classes)
    if bad.any():
        index = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"label {int(labels[index])} of example {offset + index} is out of range "
            f"for a model with {classes} outputs"
        )
