"""Counting a classifier's errors on a dataset, exactly and reproducibly, in one or more processes.

The data is cut into global batches in loader order, batch b being examples [b·B, (b+1)·B).
Each batch gives an int64 error count and a float64 cross-entropy sum. Split across ranks
(`shard=(rank, world)`), a rank evaluates the batches b ≡ rank (mod world) only and leaves
the other entries zero; `bounds.distributed.sum_disjoint` then combines the ranks' arrays
exactly, and the totals are taken over all batches in a fixed way (an integer sum, and
math.fsum, which is correctly rounded). The batches themselves are the same in every run
with the same B, so a distributed run gives the single-process result bit for bit.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler, TensorDataset

from . import distributed
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


@dataclass(frozen=True, eq=False)
class BatchEvaluation:
    """Per-batch results over a dataset of n examples; entries of unevaluated batches are 0.

    `examples` and `errors` are int64, `loss_sums` float64 (nats), one entry per global batch.
    """

    n: int
    examples: np.ndarray
    errors: np.ndarray
    loss_sums: np.ndarray

    def reduced(self) -> BatchEvaluation:
        """The entry-wise sum over the ranks of the process group (exact: see sum_disjoint)."""
        counts = distributed.sum_disjoint(np.stack([self.examples, self.errors]))
        return BatchEvaluation(
            self.n, counts[0], counts[1], distributed.sum_disjoint(self.loss_sums)
        )

    def total(self) -> Evaluation:
        """Totals over all batches; ValueError unless every batch and example was evaluated once."""
        missing = np.flatnonzero(self.examples == 0)
        if missing.size:
            raise ValueError(
                f"{missing.size} of {self.examples.size} batches were not evaluated "
                f"(the first is batch {int(missing[0])}): is every shard taking part?"
            )
        seen = int(self.examples.sum())
        if seen != self.n:
            raise ValueError(f"the data yielded {seen} examples but reports a length of {self.n}")
        return Evaluation(
            n=self.n,
            errors=int(self.errors.sum()),
            loss_sum=math.fsum(self.loss_sums.tolist()),
        )


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


def evaluate(
    model: torch.nn.Module,
    data,
    *,
    device: str = "cpu",
    batch_size: int = 1024,
    quiet: bool = True,
    description: str = "evaluating",
    shard: tuple[int, int] | None = None,
) -> Evaluation:
    """Count argmax errors and sum the cross-entropy of `model` over every example of `data`.

    Labels must be integers in [0, C) for a model with C outputs; the model must accept the
    inputs. Each violation raises ValueError naming it. In a process group (see
    bounds.distributed) each rank evaluates its share of the batches (`shard`, default
    `distributed.shard()`); every rank must hold the same model and data, which is checked,
    and gets the same result, equal to a single process's. Only rank 0 shows progress.
    """
    shard = distributed.shard() if shard is None else shard
    quiet = quiet or not distributed.is_main()

    def run() -> BatchEvaluation:
        return evaluate_batches(
            model,
            data,
            device=device,
            batch_size=batch_size,
            quiet=quiet,
            description=description,
            shard=shard,
        )

    if not distributed.active():
        return run().total()
    # A rank that fails alone must not leave the others waiting in a collective.
    batches, failure = None, None
    try:
        batches = run()
    except Exception as error:  # re-raised on every rank just below
        failure = error
    distributed.raise_if_any(failure)
    distributed.check_identical(
        (batches.n, batches.examples.size, weights_digest(model)),
        "the dataset size, the number of batches or the model weights",
    )
    return batches.reduced().total()


@torch.no_grad()
def evaluate_batches(
    model: torch.nn.Module,
    data,
    *,
    device: str = "cpu",
    batch_size: int = 1024,
    quiet: bool = True,
    description: str = "evaluating",
    shard: tuple[int, int] | None = None,
) -> BatchEvaluation:
    """Per-batch errors and cross-entropy sums of the batches b ≡ rank (mod world) of `shard`.

    Without `shard`, every batch. Only the shard's batches are loaded. Splitting needs the
    examples in a fixed order: data that is not a DataLoader, or a DataLoader with the default
    sequential sampler. Any other DataLoader is evaluated whole, in its own order.
    """
    loader = as_loader(data, batch_size)
    n = dataset_size(loader)
    rank, world = _check_shard(shard)
    if any(t.device != torch.device(device) for t in [*model.parameters(), *model.buffers()]):
        model = model.to(device)
    model.eval()
    size = _sequential_batch_size(loader, n)
    if size is None:
        if world > 1:
            raise ValueError(
                "a DataLoader with a custom or shuffling sampler cannot be split across "
                "processes; pass the Dataset instead"
            )
        count, batches, mine = None, _in_loader_order(loader), n
    else:
        count = -(-n // size)
        indices = range(rank, count, world)
        batches = _selected_batches(loader, n, size, indices)
        mine = sum(min(size, n - b * size) for b in indices)
    results: dict[int, tuple[int, int, float]] = {}
    with progress_bar(description, mine, quiet) as steps:
        for index, offset, batch in batches:
            results[index] = _evaluate_batch(model, batch, device, offset)
            steps.advance(results[index][0])
    count = len(results) if count is None else count
    examples, errors = np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64)
    loss_sums = np.zeros(count, dtype=np.float64)
    for index, (batch_examples, batch_errors, batch_loss) in results.items():
        examples[index], errors[index], loss_sums[index] = batch_examples, batch_errors, batch_loss
    return BatchEvaluation(n=n, examples=examples, errors=errors, loss_sums=loss_sums)


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the names, dtypes, shapes and bytes of every parameter and buffer."""
    digest = hashlib.sha256()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_shard(shard: tuple[int, int] | None) -> tuple[int, int]:
    if shard is None:
        return 0, 1
    try:
        rank, world = (int(part) for part in shard)
    except (TypeError, ValueError):
        raise ValueError(f"shard must be a pair (rank, world size), got {shard!r}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard must satisfy 0 ≤ rank < world size, got {shard!r}")
    return rank, world


def _sequential_batch_size(loader: DataLoader, n: int) -> int | None:
    """B if `loader` yields examples 0..n−1 in order in batches of B, else None."""
    sampler = loader.batch_sampler
    if type(sampler) is not BatchSampler or type(sampler.sampler) is not SequentialSampler:
        return None
    if sampler.drop_last and n % sampler.batch_size:
        raise ValueError(
            f"the DataLoader drops its last {n % sampler.batch_size} examples (drop_last=True); "
            "every training example must be evaluated"
        )
    return sampler.batch_size


def _selected_batches(
    loader: DataLoader, n: int, size: int, indices: range
) -> Iterator[tuple[int, int, Any]]:
    """(b, first example, batch) for the batches b in `indices`; no other example is loaded."""
    if not indices:
        return iter(())
    selected = [list(range(b * size, min((b + 1) * size, n))) for b in indices]
    subset = DataLoader(
        loader.dataset,
        batch_sampler=selected,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
    )
    return ((b, b * size, batch) for b, batch in zip(indices, subset, strict=True))


def _in_loader_order(loader: DataLoader) -> Iterator[tuple[int, int, Any]]:
    """(b, first example, batch) for every batch the loader yields, in its order."""
    offset = 0
    for index, batch in enumerate(loader):
        yield index, offset, batch
        offset += len(batch[1]) if isinstance(batch, list | tuple) and len(batch) == 2 else 0


def _evaluate_batch(
    model: torch.nn.Module, batch, device: str, offset: int
) -> tuple[int, int, float]:
    """(examples, argmax errors, float64 cross-entropy sum) of one batch."""
    if not isinstance(batch, list | tuple) or len(batch) != 2:
        raise ValueError("each batch of the data must be a pair (inputs, labels)")
    inputs, labels = batch[0].to(device), batch[1].to(device)
    try:
        logits = model(inputs)
    except (RuntimeError, TypeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        shape = tuple(inputs.shape)
        raise ValueError(f"the model rejects inputs of shape {shape}: {first}") from None
    _check_labels(labels, logits, offset)
    logits = logits.double()
    errors = int((logits.argmax(dim=-1) != labels).sum())
    loss = torch.nn.functional.cross_entropy(logits, labels.long(), reduction="sum")
    return len(labels), errors, float(loss)


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
