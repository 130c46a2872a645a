"""Counting a classifier's errors on a dataset, exactly and reproducibly, in one or more processes.

The bound counts each of the n examples of a dataset once, so evaluation reads them in a fixed
order, 0…n−1, whatever the data came as (`as_loader`): a DataLoader's sampler, batch sampler and
drop_last are replaced, and a dataset that gives different values when the same examples are
loaded twice (a random augmentation) is refused. The examples are cut into global batches,
batch b being examples [b·B, (b+1)·B) for the evaluation batch size B.
Each batch gives an int64 error count and a float64 cross-entropy sum. Split across ranks
(`shard=(rank, world)`), a rank evaluates the batches b ≡ rank (mod world) only and leaves
the other entries zero; `bounds.pipeline.distributed.sum_disjoint` then combines the ranks' arrays
exactly, and the totals are taken over all batches in a fixed way (an integer sum, and
math.fsum, which is correctly rounded). The batches themselves are the same in every run
with the same B, so a distributed run gives the single-process result bit for bit.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from bounds.pipeline import distributed
from bounds.reports.progress import progress_bar


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


#: Examples loaded twice to check that a dataset is deterministic, besides its first and last.
_PROBES = 6


def as_loader(data, batch_size: int = 1024) -> DataLoader:
    """A DataLoader of the examples 0…n−1 of `data`, in that order, `batch_size` at a time.

    `data` is a map-style Dataset, a pair of tensors (x, y), or a DataLoader. Of a DataLoader
    only the dataset, collate_fn and worker settings are kept: its sampler or batch sampler
    (shuffled, a subset, drawn with replacement), batch size and drop_last are replaced, since
    the bound counts every example of the dataset exactly once. An IterableDataset, or a
    DataLoader without automatic batching (batch_size=None), is refused: its order cannot be
    fixed.
    """
    if isinstance(data, DataLoader):
        return _in_order(data, batch_size)
    if isinstance(data, tuple) and len(data) == 2:
        data = TensorDataset(torch.as_tensor(data[0]), torch.as_tensor(data[1]))
    if not isinstance(data, Dataset):
        raise ValueError(f"data must be a Dataset, a DataLoader or a pair (x, y), got {type(data)}")
    _check_map_style(data)
    return DataLoader(data, batch_size=batch_size, shuffle=False)


def _in_order(loader: DataLoader, batch_size: int) -> DataLoader:
    """`loader`'s dataset in order, collated and loaded as `loader` does."""
    _check_map_style(loader.dataset)
    if loader.batch_sampler is None:  # batch_size=None: the sampler's items go to the dataset
        raise ValueError(
            "a DataLoader without automatic batching (batch_size=None) cannot be evaluated "
            "example by example in a fixed order; pass a Dataset whose items are single examples"
        )
    return _loading_like(loader, batch_size=batch_size, shuffle=False)


def _loading_like(loader: DataLoader, **batching: Any) -> DataLoader:
    """A DataLoader over `loader`'s dataset that collates and loads as it does, batched as
    `batching` says (the user's sampler is never used)."""
    return DataLoader(
        loader.dataset,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        **batching,
    )


def _check_map_style(dataset) -> None:
    if isinstance(dataset, IterableDataset):
        raise ValueError(
            "an IterableDataset yields its examples in its own order, which cannot be checked to "
            "give each example exactly once; pass a map-style Dataset (__len__ and __getitem__)"
        )


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
    shard: tuple[int, int] | None = None,
    quiet: bool = True,
    **options: Any,
) -> Evaluation:
    """Count argmax errors and sum the cross-entropy of `model` over every example of `data`.

    `options` (device, batch_size, description) are those of `evaluate_batches`. Labels must
    be integers in [0, C) for a model with C outputs; the model must accept the inputs. Each
    violation raises ValueError naming it. In a process group (see bounds.pipeline.distributed)
    each rank evaluates its share of the batches (`shard`, default `distributed.shard()`);
    every rank must hold the same model and data, which is checked, and gets the same result,
    equal to a single process's. Only rank 0 shows progress.
    """
    shard = distributed.shard() if shard is None else shard
    quiet = quiet or not distributed.is_main()

    def run() -> BatchEvaluation:
        return evaluate_batches(model, data, shard=shard, quiet=quiet, **options)

    # A rank that fails alone must not leave the others waiting in a collective, and ranks
    # holding other models or data must not add up their counts.
    batches = distributed.run_checked(
        run,
        lambda result: {
            "the dataset sizes": result.n,
            "the numbers of batches": result.examples.size,
            "the model weights": weights_digest(model),
        },
    )
    return (batches.reduced() if distributed.active() else batches).total()


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

    Without `shard`, every batch. The batches are `batch_size` examples of the dataset in
    order (see `as_loader`; a DataLoader's own batch size is not used). Only the shard's
    examples are loaded: a few of them twice first, to refuse a dataset with random transforms.
    """
    loader = as_loader(data, batch_size)
    n = dataset_size(loader)
    rank, world = _check_shard(shard)
    size = loader.batch_size
    count = -(-n // size)
    indices = range(rank, count, world)
    mine = sum(min(size, n - b * size) for b in indices)
    _check_deterministic(loader, _probe_examples(size, indices, mine))
    model = _evaluating_on(model, device)
    results: dict[int, tuple[int, int, float]] = {}
    with progress_bar(description, mine, quiet) as steps:
        for index, offset, batch in _selected_batches(loader, n, size, indices):
            results[index] = _evaluate_batch(model, batch, device, offset)
            steps.advance(results[index][0])
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


def _probe_examples(size: int, indices: range, mine: int) -> list[int]:
    """The first and last of the `mine` examples in the batches `indices`, and a seeded few."""
    if mine == 0:
        return []
    # A fixed seed: the same examples in every run, so acceptance is deterministic.
    positions = {0, mine - 1, *np.random.default_rng(0).integers(0, mine, _PROBES).tolist()}
    return sorted(indices[p // size] * size + p % size for p in positions)


def _check_deterministic(loader: DataLoader, probe: list[int]) -> None:
    """ValueError if the examples `probe`, loaded and collated twice, differ in any bit."""
    if not probe:
        return
    # In this process, through the loader's own fetch path (__getitems__, collate_fn).
    probe_loader = DataLoader(loader.dataset, batch_sampler=[probe], collate_fn=loader.collate_fn)
    try:
        once, twice = (next(iter(probe_loader)) for _ in range(2))
    except (IndexError, KeyError) as error:
        raise ValueError(
            f"the dataset cannot be read as examples 0…{len(loader.dataset) - 1} in order "
            f"({type(error).__name__}: {error}); pass a Dataset indexed by 0…n−1"
        ) from None
    if not _identical(once, twice):
        raise ValueError(
            "the data gives different values when the same examples are loaded twice (a random "
            "transform or augmentation?): the bound is about fixed examples, so remove the random "
            "augmentation for certification"
        )


def _identical(a: Any, b: Any) -> bool:
    """Whether two loaded batches hold the same values, bit for bit (NaN equals NaN)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and _same_tensor(a, b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and (a.dtype, a.shape) == (b.dtype, b.shape)
            and a.tobytes() == b.tobytes()
        )
    if isinstance(a, Mapping):
        return (
            isinstance(b, Mapping)
            and list(a) == list(b)
            and all(_identical(a[key], b[key]) for key in a)
        )
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_identical, a, b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an object that cannot be compared is not known equal
        return False


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape or a.layout != b.layout:
        return False
    if a.layout != torch.strided:
        return torch.equal(a, b)
    # Bytes, not values: torch.equal calls NaN unequal to itself.
    raw = [t.detach().cpu().contiguous().reshape(-1).view(torch.uint8) for t in (a, b)]
    return torch.equal(*raw)


def _selected_batches(
    loader: DataLoader, n: int, size: int, indices: range
) -> Iterator[tuple[int, int, Any]]:
    """(b, first example, batch) for the batches b in `indices`; no other example is loaded."""
    if not indices:
        return iter(())
    selected = [list(range(b * size, min((b + 1) * size, n))) for b in indices]
    subset = _loading_like(loader, batch_sampler=selected)
    return ((b, b * size, batch) for b, batch in zip(indices, subset, strict=True))


def _evaluate_batch(
    model: torch.nn.Module, batch, device: str, offset: int
) -> tuple[int, int, float]:
    """(examples, argmax errors, float64 cross-entropy sum) of one batch."""
    logits, labels = _logits(model, batch, device, offset)
    errors = int((logits.argmax(dim=-1) != labels).sum())
    loss = torch.nn.functional.cross_entropy(logits, labels.long(), reduction="sum")
    return len(labels), errors, float(loss)


def _logits(
    model: torch.nn.Module, batch, device: str, offset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 logits [B, C] of one batch (inputs, labels) and its checked labels."""
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
    return logits.double(), labels


@torch.no_grad()
def example_errors(
    model: torch.nn.Module, data, *, device: str = "cpu", batch_size: int = 1024
) -> np.ndarray:
    """Whether `model`'s argmax misses the label, per example of `data` in order (bool [n]).
    A pair of tensors (inputs, labels) is sliced into batches directly."""
    if isinstance(data, tuple) and all(isinstance(part, torch.Tensor) for part in data):
        x, y = data
        batches = (
            (x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)
        )
    else:
        batches = as_loader(data, batch_size)
    model = _evaluating_on(model, device)
    wrong, offset = [], 0
    for batch in batches:
        logits, labels = _logits(model, batch, device, offset)
        wrong.append((logits.argmax(dim=-1) != labels).cpu().numpy())
        offset += len(labels)
    return np.concatenate(wrong) if wrong else np.zeros(0, dtype=bool)


def _evaluating_on(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """`model` on `device` (moved only if a tensor is elsewhere), in eval mode."""
    if any(t.device != torch.device(device) for t in [*model.parameters(), *model.buffers()]):
        model = model.to(device)
    return model.eval()


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
