"""Scoring a causal language model on a token corpus, token by token and reproducibly.

For each scored token y with context x_<t (the window of `token_windows`), from the logits z
in float64 with p = softmax(z) and vocabulary size V = number of logits:
- log loss −log₂ p_y;
- smoothed log loss ℓ_α = −log₂ p̃_y, p̃ = (1 − α) p + α/V, for each α of the grid
  (Lotfi et al. 2024, "Non-vacuous generalization bounds for large language models"), with
  range [−log₂(1 − α + α/V), log₂(V/α)] (both from `bounds.sequence`);
- top-k error: 1 iff #{v : z_v > z_y} + #{v < y : z_v = z_y} ≥ k (ties go to the lower index);
- the model's forecast c of each loss, which depends on the context only: the entropy of p̃
  in bits for ℓ_α, 1 − Σ_{v in top-k} p_v for the top-k error. The evaluation keeps
  Σ (X − c)² with loss X and forecast c mapped to [0, 1] by the loss's range, the variance
  proxy of the Freedman / empirical-Bernstein token bound.

Windows are batched `batch_size` at a time in plan order, right-padded to the longest window
of the batch; the model must be causal (its logits at a position depend only on that position
and earlier ones), so padding changes no scored logit, and padded positions are left out of
every sum. Per-window sums are kept, so results can be
combined across processes exactly (`TokenEvaluation.arrays`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .progress import progress_bar
from .sequence import smoothed_log_loss, smoothed_loss_range
from .tokens import TokenCorpus, token_windows

LN2 = math.log(2.0)
#: Bytes of one float64 [rows, V] work array; the scorer keeps three (and two boolean ones).
_CHUNK_BYTES = 16 << 20
#: Per-window arrays that are sums over tokens (and so add up across shards).
SUMMED_FIELDS = (
    "tokens",
    "log_loss_bits",
    "smoothed_bits",
    "smoothed_square",
    "topk_errors",
    "topk_square",
)


@dataclass(frozen=True)
class TokenTotals:
    """Sums over every scored token: m, Σ −log₂ p, and per α / per k the loss and Σ (X − c)²."""

    tokens: int
    log_loss_bits: float
    smoothed_bits: tuple[float, ...]
    smoothed_square: tuple[float, ...]
    topk_errors: tuple[int, ...]
    topk_square: tuple[float, ...]
    alphas: tuple[float, ...]
    top_k: tuple[int, ...]
    vocab_size: int

    @property
    def mean_log_loss_bits(self) -> float:
        return self.log_loss_bits / self.tokens

    @property
    def mean_smoothed_bits(self) -> tuple[float, ...]:
        return tuple(total / self.tokens for total in self.smoothed_bits)

    @property
    def topk_error_rate(self) -> tuple[float, ...]:
        return tuple(errors / self.tokens for errors in self.topk_errors)


@dataclass(frozen=True, eq=False)
class TokenEvaluation:
    """Per-window sums over scored tokens (float64, counts int64), in plan order.

    Rows: `window_doc` [W] (document of each window), `tokens` [W] (scored tokens),
    `log_loss_bits` [W], `smoothed_bits` / `smoothed_square` [W, A], `topk_errors` /
    `topk_square` [W, K]. On a shard the rows of windows other ranks evaluate are zero.
    """

    window_doc: np.ndarray
    tokens: np.ndarray
    log_loss_bits: np.ndarray
    smoothed_bits: np.ndarray
    smoothed_square: np.ndarray
    topk_errors: np.ndarray
    topk_square: np.ndarray
    alphas: tuple[float, ...]
    top_k: tuple[int, ...]
    vocab_size: int
    num_documents: int
    context: int
    stride: int
    shard: tuple[int, int] | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        """The summed arrays by name; each entry is nonzero on one shard only."""
        return {name: getattr(self, name) for name in SUMMED_FIELDS}

    def with_arrays(self, arrays: dict[str, np.ndarray]) -> TokenEvaluation:
        """This evaluation holding `arrays` (e.g. the sum over all shards), no longer a shard."""
        if set(arrays) != set(SUMMED_FIELDS):
            raise ValueError(f"arrays must be exactly {', '.join(SUMMED_FIELDS)}")
        checked = {}
        for name in SUMMED_FIELDS:
            current, given = getattr(self, name), np.asarray(arrays[name])
            if given.shape != current.shape or given.dtype != current.dtype:
                raise ValueError(
                    f"{name} must have shape {current.shape} and dtype {current.dtype}, "
                    f"got {given.shape} {given.dtype}"
                )
            checked[name] = given
        return replace(self, **checked, shard=None)

    def per_document(self) -> TokenEvaluation:
        """The same sums reduced per document (rows = documents 0…D−1, in order)."""
        documents = np.arange(self.num_documents, dtype=np.int64)
        first_rows = np.searchsorted(self.window_doc, documents)
        reduced = {
            name: np.add.reduceat(array, first_rows, axis=0)
            for name, array in self.arrays().items()
        }
        return replace(self, window_doc=documents, **reduced)

    def totals(self) -> TokenTotals:
        """Sums over all rows, each column added with math.fsum in row order."""

        def column_sums(array: np.ndarray) -> tuple[float, ...]:
            return tuple(math.fsum(column) for column in array.T)

        return TokenTotals(
            tokens=int(self.tokens.sum()),
            log_loss_bits=math.fsum(self.log_loss_bits),
            smoothed_bits=column_sums(self.smoothed_bits),
            smoothed_square=column_sums(self.smoothed_square),
            topk_errors=tuple(int(total) for total in self.topk_errors.sum(axis=0)),
            topk_square=column_sums(self.topk_square),
            alphas=self.alphas,
            top_k=self.top_k,
            vocab_size=self.vocab_size,
        )


@torch.no_grad()
def evaluate_lm(
    model: Callable[[torch.Tensor], Any],
    corpus: TokenCorpus,
    *,
    context: int,
    stride: int,
    alphas: Sequence[float],
    top_k: Sequence[int],
    batch_size: int = 8,
    device: str = "cpu",
    quiet: bool = True,
    shard: tuple[int, int] | None = None,
    description: str = "scoring tokens",
) -> TokenEvaluation:
    """Score every scored token of `corpus` under the causal LM `model` (see module doc).

    `model` maps long ids [B, T] (T ≤ context) to logits [B, T, V], as a tensor or as an
    object with `.logits`. `shard=(rank, world)` evaluates only the batches whose index is
    rank mod world. `description` labels the progress bar (shown unless `quiet`). Bad input
    raises ValueError naming it.
    """
    alphas = _check_alphas(alphas)
    top_k = _check_top_k(top_k)
    batch_size = _positive(batch_size, "batch_size")
    rank, world = _check_shard(shard)
    plan = token_windows(corpus, context, stride)
    if isinstance(model, torch.nn.Module):
        tensors = [*model.parameters(), *model.buffers()]
        if any(t.device != torch.device(device) for t in tensors):
            model = model.to(device)
        model.eval()
    vocab_size = _probe_vocab_size(model, device)
    if corpus.vocab_size is not None and corpus.vocab_size > vocab_size:
        raise ValueError(
            f"the corpus's vocabulary has {corpus.vocab_size} ids but the model only "
            f"{vocab_size} outputs"
        )
    if top_k and max(top_k) > vocab_size:
        raise ValueError(f"top_k {max(top_k)} exceeds the model's vocabulary of {vocab_size}")
    count, num_alphas, num_k = len(plan), len(alphas), len(top_k)
    result = {
        "tokens": np.zeros(count, np.int64),
        "log_loss_bits": np.zeros(count),
        "smoothed_bits": np.zeros((count, num_alphas)),
        "smoothed_square": np.zeros((count, num_alphas)),
        "topk_errors": np.zeros((count, num_k), np.int64),
        "topk_square": np.zeros((count, num_k)),
    }
    begins = [
        begin for index, begin in enumerate(range(0, count, batch_size)) if index % world == rank
    ]
    scored = plan["end"] - plan["first_scored"]
    total = int(sum(scored[begin : begin + batch_size].sum() for begin in begins))
    scorer = _Scorer(alphas, top_k, vocab_size, device)
    with progress_bar(description, total, quiet) as steps:
        for begin in begins:
            windows = plan[begin : begin + batch_size]
            sums = _evaluate_batch(model, corpus, windows, scorer, device)
            for name, array in sums.items():
                result[name][begin : begin + len(windows)] = array
            steps.advance(int(sums["tokens"].sum()))
    return TokenEvaluation(
        window_doc=plan["doc"].copy(),
        **result,
        alphas=alphas,
        top_k=top_k,
        vocab_size=vocab_size,
        num_documents=corpus.num_documents,
        context=int(context),
        stride=int(stride),
        shard=shard if shard is None else (rank, world),
    )


class _Scorer:
    """Per-token losses, forecasts and squared deviations from logits [R, V], in float64.

    The [R, V] work arrays are allocated once and reused (in-place operations): fresh
    allocations of this size cost more in page faults than the arithmetic.
    """

    def __init__(self, alphas, top_k, vocab_size: int, device: str) -> None:
        self.alphas, self.top_k, self.vocab_size = alphas, top_k, vocab_size
        ranges = np.array([smoothed_loss_range(a, vocab_size) for a in alphas]).reshape(-1, 2)
        self.low, self.width = ranges[:, 0], ranges[:, 1] - ranges[:, 0]
        self.k = np.array(top_k, dtype=np.int64)
        self.rows_per_chunk = max(1, _CHUNK_BYTES // (8 * vocab_size))
        shape = (self.rows_per_chunk, vocab_size)
        self.index = torch.arange(vocab_size, device=device)
        self.logits = torch.empty(shape, dtype=torch.float64, device=device)
        self.probabilities = torch.empty(shape, dtype=torch.float64, device=device)
        self.work = torch.empty(shape, dtype=torch.float64, device=device)
        self.above = torch.empty(shape, dtype=torch.bool, device=device)
        self.before = torch.empty(shape, dtype=torch.bool, device=device)

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, np.ndarray]:
        """Per-token values of every summed field for the rows of `logits` (at most a chunk)."""
        rows = len(logits)
        z, p, work = self.logits[:rows], self.probabilities[:rows], self.work[:rows]
        z.copy_(logits)
        peak = z.amax(1, keepdim=True)
        if not (torch.isfinite(peak).all() and torch.isfinite(z.amin(1)).all()):
            raise ValueError("the model returned a non-finite logit (NaN or ±inf)")
        # log_softmax: ln p = (z − max) − ln Σ exp(z − max)
        torch.sub(z, peak, out=p)
        torch.exp(p, out=work)
        total = work.sum(1, keepdim=True)
        torch.div(work, total, out=p)
        z_target = z.gather(1, targets[:, None])
        log_p_target = ((z_target - peak) - total.log())[:, 0]
        rank = self._rank(z, z_target, targets)
        entropy = self._entropy_bits(p, work)
        if self.top_k:
            top_mass = torch.topk(p, int(self.k.max()), dim=1).values.cumsum(1)
            top_mass = top_mass[:, torch.as_tensor(self.k - 1, device=z.device)]
        else:
            top_mass = z.new_zeros((rows, 0))
        host = [t.cpu().numpy() for t in (log_p_target, rank, entropy, top_mass)]
        return self._deviations(*host)

    def _rank(self, z: torch.Tensor, z_target: torch.Tensor, targets: torch.Tensor):
        """#{v : z_v > z_y} + #{v < y : z_v = z_y}: the target's place, ties to lower ids."""
        above, before = self.above[: len(z)], self.before[: len(z)]
        torch.gt(z, z_target, out=above)
        rank = above.sum(1)
        torch.eq(z, z_target, out=above)
        torch.lt(self.index, targets[:, None], out=before)
        return rank + above.logical_and_(before).sum(1)

    def _entropy_bits(self, p: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
        """H(p̃) = −Σ_v p̃_v log₂ p̃_v for every α, [R, A], one α at a time.

        p̃ = (1 − α) p + α/V is a sum of two non-negative terms, so forming it directly is
        accurate to an ulp and p̃ ≥ α/V > 0; it costs one logarithm per entry.
        """
        entropy = p.new_zeros((len(p), len(self.alphas)))
        for column, alpha in enumerate(self.alphas):
            torch.mul(p, 1.0 - alpha, out=work)
            torch.special.entr(work.add_(alpha / self.vocab_size), out=work)
            entropy[:, column] = work.sum(1) / LN2
        return entropy

    def _deviations(self, log_p_target, rank, entropy, top_mass) -> dict[str, np.ndarray]:
        rows = len(rank)
        smoothed = np.array(
            [smoothed_log_loss(log_p_target, alpha, self.vocab_size) for alpha in self.alphas]
        )
        smoothed = smoothed.reshape(len(self.alphas), rows).T
        loss_unit = (smoothed - self.low) / self.width
        errors = (rank[:, None] >= self.k).astype(np.int64)
        # The Bernstein bound needs forecasts in [0, 1] that depend on the context only. Both
        # lie in [0, 1] in exact arithmetic; clamping removes rounding and keeps them predictable.
        forecast_unit = np.clip((entropy - self.low) / self.width, 0.0, 1.0)
        miss_forecast = np.clip(1.0 - top_mass, 0.0, 1.0)
        return {
            "tokens": np.ones(rows, np.int64),
            "log_loss_bits": -log_p_target / LN2,
            "smoothed_bits": smoothed,
            "smoothed_square": (loss_unit - forecast_unit) ** 2,
            "topk_errors": errors,
            "topk_square": (errors - miss_forecast) ** 2,
        }


def _evaluate_batch(model, corpus: TokenCorpus, windows: np.ndarray, scorer: _Scorer, device):
    """Per-window sums for one batch of windows."""
    inputs, targets, scored = _batch_arrays(corpus, windows, scorer.vocab_size)
    logits = _forward(model, torch.from_numpy(inputs).to(device), scorer.vocab_size)
    flat_logits = logits.reshape(-1, scorer.vocab_size)
    rows = np.flatnonzero(scored)
    flat_targets = torch.from_numpy(targets.reshape(-1)[rows]).to(device)
    rows_on_device = torch.from_numpy(rows).to(device)
    chunks = []
    for begin in range(0, len(rows), scorer.rows_per_chunk):
        part = slice(begin, begin + scorer.rows_per_chunk)
        chunks.append(scorer.score(flat_logits[rows_on_device[part]], flat_targets[part]))
    per_row = {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
    # Rows come in window order and every window scores at least one token.
    first_rows = np.searchsorted(rows // inputs.shape[1], np.arange(len(windows)))
    return {name: np.add.reduceat(values, first_rows, axis=0) for name, values in per_row.items()}


def _batch_arrays(corpus: TokenCorpus, windows: np.ndarray, vocab_size: int):
    """Right-padded inputs and targets [B, T] (int64) and the mask of scored targets."""
    starts, ends = windows["start"][:, None], windows["end"][:, None]
    width = int((windows["end"] - windows["start"]).max())
    positions = starts + np.arange(width)
    inside = positions < ends
    ids = np.asarray(corpus.tokens[np.where(inside, positions, starts)]).astype(np.int64)
    if ids.max() >= vocab_size:
        row, column = np.argwhere(inside & (ids >= vocab_size))[0]
        raise ValueError(
            f"token id {ids[row, column]} at position {positions[row, column]} of "
            f"{corpus.source or 'the corpus'} is out of range for a model with {vocab_size} "
            "outputs"
        )
    ids[~inside] = 0
    scored = (positions[:, 1:] >= windows["first_scored"][:, None]) & inside[:, 1:]
    return ids[:, :-1], ids[:, 1:], scored


def _forward(model, ids: torch.Tensor, vocab_size: int | None) -> torch.Tensor:
    """The model's logits for `ids`, checked to be [B, T, V]."""
    try:
        output = model(ids)
    except (RuntimeError, TypeError, ValueError, IndexError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        shape = tuple(ids.shape)
        raise ValueError(f"the model rejects long token ids of shape {shape}: {first}") from None
    logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor):
        raise ValueError(
            "the model must return logits as a tensor or an object with .logits, "
            f"got {type(output).__name__}"
        )
    batch, length = ids.shape
    if (
        logits.ndim != 3
        or tuple(logits.shape[:2]) != (batch, length)
        or (vocab_size is not None and logits.shape[2] != vocab_size)
    ):
        raise ValueError(
            f"the model must map token ids [{batch}, {length}] to logits "
            f"[{batch}, {length}, {vocab_size or 'V'}], got shape {tuple(logits.shape)}"
        )
    return logits


def _probe_vocab_size(model, device: str) -> int:
    """V from the logits of a one-token input (id 0)."""
    logits = _forward(model, torch.zeros((1, 1), dtype=torch.long, device=device), None)
    if logits.shape[2] < 2:
        raise ValueError(f"a language model needs at least 2 outputs, got {logits.shape[2]}")
    return int(logits.shape[2])


def _check_alphas(alphas: Sequence[float]) -> tuple[float, ...]:
    values = _as_tuple(alphas, "alphas")
    for alpha in values:
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha < 1:
            raise ValueError(f"every smoothing alpha must lie strictly in (0, 1), got {alpha!r}")
    return tuple(float(alpha) for alpha in values)


def _check_top_k(top_k: Sequence[int]) -> tuple[int, ...]:
    values = _as_tuple(top_k, "top_k")
    for k in values:
        _positive(k, "every top_k")
    return tuple(int(k) for k in values)


def _as_tuple(values, name: str) -> tuple:
    try:
        return tuple(values)
    except TypeError:
        raise ValueError(f"{name} must be a sequence, got {values!r}") from None


def _check_shard(shard: tuple[int, int] | None) -> tuple[int, int]:
    if shard is None:
        return 0, 1
    try:
        rank, world = shard
    except (TypeError, ValueError):
        raise ValueError(f"shard must be a pair (rank, world), got {shard!r}") from None
    world = _positive(world, "the shard's world size")
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or not 0 <= rank < world:
        raise ValueError(f"the shard's rank must be an integer in [0, {world}), got {rank!r}")
    return int(rank), world


def _positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
