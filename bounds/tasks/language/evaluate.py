"""Scoring a causal language model on a token corpus, token by token and reproducibly.

For each scored token y with context x_<t (the window of `token_windows`), from the logits z
with p = softmax(z) and vocabulary size V = number of logits:
- log loss −log₂ p_y = (max z − z_y + ln Σ_v p_v − ln max_v p_v) / ln 2 (Σ p / max p =
  Σ_v exp(z_v − max z)), with p computed in single precision as the logits are (double for
  a model whose logits are float64), Σ p and the rest in float64;
- smoothed log loss ℓ_α = −log₂ p̃_y, p̃ = (1 − α) p + α/V, for each α of the grid
  (Lotfi et al. 2024, "Non-vacuous generalization bounds for large language models"), with
  range [−log₂(1 − α + α/V), log₂(V/α)] (both from `bounds.formulas.sequence`);
- top-k error: 1 iff #{v : z_v > z_y} + #{v < y : z_v = z_y} ≥ k (ties go to the lower index);
- the model's forecast c of each loss, which depends on the context only: the entropy of p̃
  in bits for ℓ_α (computed from a histogram of p for a large vocabulary), 1 − Σ_{v in
  top-k} p_v for the top-k error. The evaluation keeps
  Σ (X − c)² with loss X and forecast c mapped to [0, 1] by the loss's range, the variance
  proxy of the Freedman / empirical-Bernstein token bound.

Windows are batched `batch_size` at a time in plan order, right-padded to the longest window
of the batch; the model must be causal (its logits at a position depend only on that position
and earlier ones), so padding changes no scored logit, and padded positions are left out of
every sum. Per-window sums are kept, so results can be
combined across processes exactly (`TokenEvaluation.arrays`).

Causality is checked, not assumed (`check_causal`, run by `evaluate_lm` before it scores
anything): a model whose logits at a position see a later token would be scored on predictions
that saw their targets, and certify a loss no causal predictor can reach.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NoReturn

import numpy as np
import torch

from bounds.formulas.sequence import smoothed_log_loss, smoothed_loss_range
from bounds.reports.progress import progress_bar
from bounds.tasks.language.tokens import TokenCorpus, token_windows

LN2 = math.log(2.0)
#: Bytes of one int64 [rows, V] work array; the scorer keeps it, a float64 one, an int32 one and
#: two boolean ones, and makes the softmax p of each chunk. Small enough that a chunk stays in
#: the processor's cache from one pass to the next, large enough to spread the fixed cost of
#: its dozen operations over several tokens: 5 rows of GPT-2's 50 257, the fastest of 1 to 20
#: (`benchmarks/results/scoring.md`).
_CHUNK_BYTES = 2 << 20
#: The entropy forecasts: a sum over the ids up to this vocabulary size, a histogram of p above
#: it, whose bins are named by the first 12 bits of p in single precision (p ≤ 1 keeps them
#: below 1024).
_EXACT_ENTROPY_VOCAB = 512
_BIN_SHIFT = 20
_BINS = 1024
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
    causality_check: bool = True,
) -> TokenEvaluation:
    """Score every scored token of `corpus` under the causal LM `model` (see module doc).

    `model` maps long ids [B, T] (T ≤ context) to logits [B, T, V], as a tensor or as an
    object with `.logits`. `shard=(rank, world)` evaluates only the batches whose index is
    rank mod world. `description` labels the progress bar (shown unless `quiet`). Bad input,
    and a model that fails `check_causal`, raise ValueError naming it. `causality_check=False`
    skips that check; only for scores that never reach a bound (the search's screen, whose
    chosen word is evaluated again, checked).
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
    if causality_check:
        check_causal(
            model, corpus, plan, vocab_size=vocab_size, batch_size=batch_size, device=device
        )
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


#: The causality check (`check_causal`): windows of the corpus and of random tokens it tests,
#: and cut points drawn per window besides the first and the last position.
CAUSAL_CORPUS_WINDOWS = 2
CAUSAL_RANDOM_WINDOWS = 1
CAUSAL_RANDOM_CUTS = 3
# Fixed, so the same windows, cut points and replacement tokens are tested in every run and
# whether a model is accepted never depends on chance.
_CAUSAL_SEED = 0x63617573616C


def check_causal(
    model: Callable[[torch.Tensor], Any],
    corpus: TokenCorpus,
    plan: np.ndarray,
    *,
    vocab_size: int,
    batch_size: int,
    device: str,
) -> None:
    """Raise ValueError unless the logits of `model` at a position ignore every later token.

    Tested, all drawn with a fixed seed: `CAUSAL_CORPUS_WINDOWS` windows of `plan` (inputs of
    at least 2 tokens) and `CAUSAL_RANDOM_WINDOWS` of uniform random ids as long as the plan's
    longest input. In a window of T tokens the cut points t are 0 and T − 2 (the first and the
    last position a later token can reach; an off-by-one at either end of a window shows
    there) and `CAUSAL_RANDOM_CUTS` drawn between them (all positions if there are no more).
    For each t every token after t is replaced by a different random one, and the logits at
    positions 0…t must not change at all. A leak into a fraction f of the inner positions
    escapes all windows with probability about (1 − f)^(3·3). Each variant is compared with
    the window at the same row of a call of the same shape: some matrix-multiply kernels round
    a row differently by where it lies in the batch (seen with MKL on an AVX-512 CPU), so two
    rows of one call may differ in their last bit although their inputs are equal. Cost: per
    window, its at most 5 variants in calls of at most `batch_size` rows, and the window
    repeated as many times, once per distinct call size.
    """
    # Replacements stay within the declared vocabulary, when there is one to choose from.
    declared = corpus.vocab_size
    limit = declared if declared is not None and declared >= 2 else vocab_size
    rng = np.random.default_rng(_CAUSAL_SEED)
    for label, ids in _causal_windows(corpus, plan, vocab_size, limit, rng):
        cuts = _cut_points(len(ids), rng)
        variants = [_replace_after(ids, t, limit, rng) for t in cuts]
        repeated: dict[int, torch.Tensor] = {}  # the window's logits, by the number of rows
        for begin in range(0, len(cuts), batch_size):
            part = slice(begin, begin + batch_size)
            rows = len(cuts[part])
            if rows not in repeated:
                window = torch.from_numpy(np.stack([ids] * rows)).to(device)
                repeated[rows] = _forward(model, window, vocab_size)
            batch = torch.from_numpy(np.stack(variants[part])).to(device)
            _compare_cuts(model, batch, repeated[rows], cuts[part], label, vocab_size)


def _causal_windows(
    corpus: TokenCorpus, plan: np.ndarray, vocab_size: int, limit: int, rng: np.random.Generator
) -> list[tuple[str, np.ndarray]]:
    """(label, input ids) of the windows `check_causal` tests: the corpus's, then random ones."""
    lengths = plan["end"] - plan["start"] - 1
    eligible = np.flatnonzero(lengths >= 2)
    count = min(CAUSAL_CORPUS_WINDOWS, len(eligible))
    windows = []
    for index in np.sort(rng.choice(eligible, size=count, replace=False)) if count else []:
        inputs, _, _ = _batch_arrays(corpus, plan[index : index + 1], vocab_size)
        windows.append((f"window {index} of the corpus", inputs[0]))
    longest = int(lengths.max())
    if longest >= 2:
        for _ in range(CAUSAL_RANDOM_WINDOWS):
            windows.append(("random tokens", rng.integers(0, limit, size=longest, dtype=np.int64)))
    return windows


def _cut_points(length: int, rng: np.random.Generator) -> list[int]:
    """Positions t of a window of `length` ≥ 2 tokens after which the tokens are replaced."""
    last = length - 2
    inner = np.arange(1, last)
    if len(inner) > CAUSAL_RANDOM_CUTS:
        inner = rng.choice(inner, size=CAUSAL_RANDOM_CUTS, replace=False)
    return sorted({0, last, *inner.tolist()})


def _replace_after(ids: np.ndarray, t: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    """`ids` with every token after position t replaced by a different id below `limit`."""
    changed = ids.copy()
    # A shift in [1, limit) mod limit never maps an id to itself (an id ≥ limit leaves [0, limit)).
    shift = rng.integers(1, limit, size=len(ids) - t - 1, dtype=np.int64)
    changed[t + 1 :] = (ids[t + 1 :] + shift) % limit
    return changed


def _compare_cuts(model, batch, reference, cuts, label: str, vocab_size: int) -> None:
    """ValueError if the logits of row r of `batch` (cut after cuts[r]) at a position ≤ t differ
    from those of row r of `reference`, the window's own in a call of the same shape."""
    logits = _forward(model, batch, vocab_size)
    # Exact comparison, no tolerance: row r of either call goes through the same kernels with
    # the same shapes, and a causal model computes its logits at positions ≤ t from identical
    # values (masked attention adds exact zeros), so they agree bit for bit. A tolerance would
    # let a small enough leak through, and the bound profits from any leak.
    for row, t in enumerate(cuts):
        moved = _differs(logits[row, : t + 1], reference[row, : t + 1]).any(dim=1)
        if moved.any():
            position = int(moved.nonzero()[0, 0])
            _refuse(model, batch, logits, vocab_size, label, t, position)


def _refuse(model, batch, logits, vocab_size: int, label: str, t: int, position: int) -> NoReturn:
    """The ValueError for a model that failed the check: random (rerun differs), or not causal."""
    if _differs(_forward(model, batch, vocab_size), logits).any():
        raise ValueError(
            "the model is not deterministic: the same token ids gave different logits in two "
            "calls (dropout or another random layer left on?); certified scores must be "
            "reproducible"
        )
    raise ValueError(
        f"the model is not causal: replacing the tokens after position {t} of a "
        f"{batch.shape[1]}-token input ({label}) changed its logits at position {position}; "
        "the logits at a position may depend only on the tokens up to it, or the bound "
        "scores predictions that saw their targets"
    )


def _differs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Where two logit tensors differ in value (NaN equals NaN: that fault is reported later)."""
    return (a != b) & ~(a.isnan() & b.isnan())


#: Tokens read at a time by `corpus_digest`, to bound memory on a memory-mapped stream.
_HASH_CHUNK = 1 << 22


def corpus_digest(corpus: TokenCorpus) -> str:
    """sha256 of the documents of `corpus`: their count, lengths and ids, in order.

    Ids are hashed as little-endian int64, so the digest does not depend on how the ids are
    stored (dtype, memory map, a subset of a larger stream). A run of documents each starting
    where the previous one ends is read as one slice, in chunks: one pass over the tokens.
    """
    starts, ends = corpus.starts, corpus.ends
    digest = hashlib.sha256(f"{corpus.num_documents}|{corpus.num_tokens}|".encode())
    digest.update(corpus.lengths.astype("<i8").tobytes())
    breaks = np.flatnonzero(starts[1:] != ends[:-1]) + 1
    run_starts = starts[np.r_[0, breaks]].tolist()
    run_ends = ends[np.r_[breaks - 1, len(ends) - 1]].tolist()
    for begin, end in zip(run_starts, run_ends, strict=True):
        for chunk in range(begin, end, _HASH_CHUNK):
            ids = np.asarray(corpus.tokens[chunk : min(end, chunk + _HASH_CHUNK)])
            digest.update(ids.astype("<i8").tobytes())
    return digest.hexdigest()


class _Scorer:
    """Per-token losses, forecasts and squared deviations from a batch's logits [N, V].

    The passes over the vocabulary run in the logits' precision (single, or double for a
    model that computes in double), a chunk of rows at a time, so that the chunk stays in the
    processor's cache from one pass to the next: the maximum, the softmax p, its largest
    entry, the entropy forecasts (a histogram of p for a large vocabulary) and, for k > 1, the
    rank and the top-k mass. What needs no pass over the vocabulary (the losses, reading the
    histograms) is done once per batch. The chunks' work arrays are allocated once and reused.
    """

    def __init__(self, alphas, top_k, vocab_size: int, device: str) -> None:
        self.alphas, self.top_k, self.vocab_size = alphas, top_k, vocab_size
        ranges = np.array([smoothed_loss_range(a, vocab_size) for a in alphas]).reshape(-1, 2)
        self.low, self.width = ranges[:, 0], ranges[:, 1] - ranges[:, 0]
        self.k = np.array(top_k, dtype=np.int64)
        self.rows_per_chunk = max(1, _CHUNK_BYTES // (8 * vocab_size))
        self.index = torch.arange(vocab_size, device=device)
        alpha = torch.tensor(alphas, dtype=torch.float64, device=device)[:, None]
        self.kept, self.spread = 1.0 - alpha, alpha / vocab_size  # [A, 1]: p̃ = kept p + spread
        self.exact = vocab_size <= _EXACT_ENTROPY_VOCAB
        shape = (self.rows_per_chunk, vocab_size)
        self.above = torch.empty(shape, dtype=torch.bool, device=device)
        self.before = torch.empty(shape, dtype=torch.bool, device=device)
        if not self.exact:
            self.bits = torch.empty(shape, dtype=torch.int32, device=device)
            self.bins = torch.empty(shape, dtype=torch.int64, device=device)
            self.packed = torch.empty(shape, dtype=torch.float64, device=device)

    def score(
        self, logits: torch.Tensor, rows: np.ndarray, targets: torch.Tensor
    ) -> tuple[np.ndarray, ...]:
        """(ln p of the target, its rank, the entropy forecasts, the top-k masses) of the rows
        `rows` (increasing) of `logits` [N, V], whose next tokens are `targets`;
        `deviations` turns them into the summed fields."""
        count, device = len(rows), logits.device
        # Single precision unless the model computes in double: never below the model's own.
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        peak, z_target, largest = (
            torch.empty((count, 1), dtype=dtype, device=device) for _ in range(3)
        )
        rank = torch.empty(count, dtype=torch.int64, device=device)
        top_mass = torch.empty((count, len(self.top_k)), dtype=torch.float64, device=device)
        if self.exact:
            entropy = torch.empty((count, len(self.alphas)), dtype=torch.float64, device=device)
            total = torch.empty((count, 1), dtype=torch.float64, device=device)
        else:
            histogram = torch.zeros((count, _BINS), dtype=torch.float64, device=device)
        for begin in range(0, count, self.rows_per_chunk):
            part = slice(begin, begin + self.rows_per_chunk)
            z = _rows(logits, rows[part]).to(dtype)
            torch.amax(z, 1, keepdim=True, out=peak[part])  # NaN if any logit is NaN
            torch.gather(z, 1, targets[part, None], out=z_target[part])
            # A −∞ logit is a probability of 0, harmless unless it is the target's. (A few
            # values each: checked in Python, cheaper than tensor operations at this size.)
            checked = peak[part].view(-1).tolist() + z_target[part].view(-1).tolist()
            if not all(map(math.isfinite, checked)):
                raise ValueError(
                    "the model returned a non-finite logit (NaN, +inf, or -inf for a target)"
                )
            p = torch.softmax(z, 1)
            torch.amax(p, 1, keepdim=True, out=largest[part])
            rank[part] = self._rank(z, z_target[part], targets[part], peak[part])
            if self.top_k and self.k.max() > 1:
                cumulative = torch.topk(p, int(self.k.max()), dim=1).values.double().cumsum(1)
                top_mass[part] = cumulative[:, torch.as_tensor(self.k - 1, device=device)]
            if self.exact:
                entropy[part] = self._exact_entropy_bits(p)
                torch.sum(p, 1, keepdim=True, dtype=torch.float64, out=total[part])
            else:
                self._add_to_histogram(p, histogram[part])
        if not self.exact:
            counts = torch.floor(histogram / 2 + 0.25)
            masses = histogram - 2 * counts  # m_b, up to the rounding of the sums
            total = masses.sum(1, keepdim=True)
            entropy = self._histogram_entropy_bits(counts, masses.clamp_(min=0.0))
        # Σ_v p_v / max_v p_v = Σ_v exp(z_v − max z), so ln p_y = (z_y − max z) − ln of it:
        # finite however small p_y is, and with Σ p summed in double precision (read from the
        # histogram for a large vocabulary) as accurate as p's single-precision entries.
        log_normalizer = total.log() - largest.double().log()
        log_p_target = (z_target.double() - peak.double() - log_normalizer)[:, 0]
        if self.top_k and self.k.max() == 1:
            top_mass = largest.double()
        return tuple(t.cpu().numpy() for t in (log_p_target, rank, entropy, top_mass))

    def _rank(self, z, z_target, targets, peak) -> torch.Tensor:
        """#{v : z_v > z_y} + #{v < y : z_v = z_y}, the target's place with ties to lower ids,
        as far as the top-k errors need it: counted in full, or with k = 1 only whether it is
        0 (the target is the first id with the largest logit), which needs a pass over the
        vocabulary only for the rows whose target has the largest logit."""
        if not self.top_k:
            return targets.new_zeros(len(z))
        if self.k.max() == 1:
            rank = (z_target < peak)[:, 0].long()
            leading = (~rank.bool()).nonzero()[:, 0]
            if len(leading):
                ties = (z[leading] == peak[leading]) & (self.index < targets[leading, None])
                rank[leading] = ties.any(1).long()
            return rank
        above, before = self.above[: len(z)], self.before[: len(z)]
        torch.gt(z, z_target, out=above)
        rank = above.sum(1)
        torch.eq(z, z_target, out=above)
        # Another id with the target's logit is rare: the lower-id count only where one is.
        tied = (above.sum(1) > 1).nonzero()[:, 0]
        if len(tied):
            torch.lt(self.index, targets[:, None], out=before)
            rank[tied] += above[tied].logical_and_(before[tied]).sum(1)
        return rank

    def _exact_entropy_bits(self, p: torch.Tensor) -> torch.Tensor:
        """H(p̃) = −Σ_v p̃_v log₂ p̃_v for every α, [R, A], summed over the ids one α at a time
        (in p's precision): the cheaper way for a small vocabulary."""
        entropy = torch.empty((len(p), len(self.alphas)), dtype=torch.float64, device=p.device)
        smoothed, logs = torch.empty_like(p), torch.empty_like(p)
        for column, alpha in enumerate(self.alphas):
            torch.mul(p, 1.0 - alpha, out=smoothed).add_(alpha / self.vocab_size)
            torch.log(smoothed, out=logs)
            entropy[:, column] = torch.linalg.vecdot(smoothed, logs).double() / -LN2
        return entropy

    def _add_to_histogram(self, p: torch.Tensor, histogram: torch.Tensor) -> None:
        """Adds 2 + p_v to the bin of id v in each row of `histogram` [R, _BINS] (float64): the
        bin named by the first 12 bits of p_v in single precision (sign, exponent, 3 bits of
        mantissa), so that the probabilities of a bin differ by a factor of at most 9/8 (those
        below 1.2 · 10⁻³⁸, subnormal or 0, share a few bins). A bin of n_b ids of total
        probability m_b ≤ 1 then holds 2 n_b + m_b."""
        rows = len(p)
        single = p if p.dtype == torch.float32 else p.float()
        bits, bins, packed = self.bits[:rows], self.bins[:rows], self.packed[:rows]
        torch.bitwise_right_shift(single.view(torch.int32), _BIN_SHIFT, out=bits)
        bins.copy_(bits)  # scatter_add_ takes int64 indexes; shifting into int64 costs more
        packed.copy_(p).add_(2.0)
        histogram.scatter_add_(1, bins, packed)

    def _histogram_entropy_bits(self, counts: torch.Tensor, masses: torch.Tensor) -> torch.Tensor:
        """H(p̃) = −Σ_v p̃_v log₂ p̃_v for every α, [R, A], approximated from the ids' counts
        and total probabilities in the bins of `_add_to_histogram` ([R, _BINS] each).

        The entropy is only the forecast c_t of the Bernstein bound, which may be any function
        of the context computed the same way every time. With n_b ids of total probability m_b
        in bin b, each id is given its bin's mean p̄_b = m_b / n_b:

            H(p̃) ≈ −Σ_b ((1 − α) m_b + α n_b / V) log₂((1 − α) p̄_b + α / V),

        exact when the probabilities within each bin are equal, within about 10⁻³ bits
        otherwise; one pass over the vocabulary serves every α. (n_b and m_b are read from
        2 n_b + m_b, whose rounding error is far below 1/4; a bin whose mass is below it reads
        as mass 0.) Each row's bins are its own, so a row's forecast does not depend on the
        rows scored with it.
        """
        row, column = counts.nonzero().T
        n, m = counts[row, column], masses[row, column]
        log_smoothed = torch.log(self.kept * (m / n) + self.spread)  # [A, occupied]
        terms = (self.kept * m + self.spread * n) * log_smoothed
        entropy = terms.new_zeros((len(self.alphas), len(counts))).index_add_(1, row, terms)
        return (entropy / -LN2).T

    def deviations(self, log_p_target, rank, entropy, top_mass) -> dict[str, np.ndarray]:
        """Per-token values of every summed field."""
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
    per_row = scorer.deviations(*scorer.score(flat_logits, rows, flat_targets))
    # Rows come in window order and every window scores at least one token.
    first_rows = np.searchsorted(rows // inputs.shape[1], np.arange(len(windows)))
    return {name: np.add.reduceat(values, first_rows, axis=0) for name, values in per_row.items()}


def _rows(logits: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """Rows `rows` (increasing) of `logits`: a view when they are consecutive, else a copy."""
    if rows[-1] - rows[0] == len(rows) - 1:
        return logits[rows[0] : rows[-1] + 1]
    return logits[torch.from_numpy(rows).to(logits.device)]


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
