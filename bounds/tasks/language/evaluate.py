"""Scoring a causal language model on a token corpus, token by token and reproducibly.

For each scored token y with context x_<t (the window of `token_windows`), from the logits z
with p = softmax(z) and vocabulary size V = number of logits:
- log loss −log₂ p_y = (max z − z_y + ln Σ_v exp(z_v − max z)) / ln 2, in float64 but for the
  terms exp(z_v − max z), computed in single precision as the logits are and summed in
  float64 (in double throughout for a model whose logits are float64);
- smoothed log loss ℓ_α = −log₂ p̃_y, p̃ = (1 − α) p + α/V, for each α of the grid
  (Lotfi et al. 2024, "Non-vacuous generalization bounds for large language models"), with
  range [−log₂(1 − α + α/V), log₂(V/α)] (both from `bounds.formulas.sequence`);
- top-k error: 1 iff #{v : z_v > z_y} + #{v < y : z_v = z_y} ≥ k (ties go to the lower index);
- the model's forecast c of each loss, which depends on the context only: the entropy of p̃
  in bits for ℓ_α (computed from a histogram of ln p, `_Scorer._entropy_bits`), 1 − Σ_{v in
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
#: Bytes of one int64 [rows, V] work array; the scorer keeps it, three float32 ones (float64
#: for a model that computes in double) and two boolean ones. Large enough that the fixed cost
#: of each chunk's few dozen operations is spread over many tokens (20 rows of GPT-2's 50 257).
_CHUNK_BYTES = 8 << 20
#: The entropy forecasts' histogram of ln p: bins of 1/8 nat below the largest probability,
#: the last collecting everything more than 64 nats below it.
_BINS_PER_NAT = 8
_BINS = 512
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
    escapes all windows with probability about (1 − f)^(3·3). Cost: at most 3 × 6 rows of at
    most the context (the window and its 5 variants), in calls of max(2, batch_size) rows.
    """
    # Replacements stay within the declared vocabulary, when there is one to choose from.
    declared = corpus.vocab_size
    limit = declared if declared is not None and declared >= 2 else vocab_size
    rng = np.random.default_rng(_CAUSAL_SEED)
    per_call = max(1, batch_size - 1)  # variants per call, besides the window itself
    for label, ids in _causal_windows(corpus, plan, vocab_size, limit, rng):
        cuts = _cut_points(len(ids), rng)
        variants = [_replace_after(ids, t, limit, rng) for t in cuts]
        for begin in range(0, len(cuts), per_call):
            part = slice(begin, begin + per_call)
            _compare_cuts(model, ids, cuts[part], variants[part], label, vocab_size, device)


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


def _compare_cuts(model, ids, cuts, variants, label: str, vocab_size: int, device) -> None:
    """One call on the window and its variants; ValueError if a logit at a position ≤ t moved."""
    batch = torch.from_numpy(np.stack([ids, *variants])).to(device)
    logits = _forward(model, batch, vocab_size)
    # Exact comparison, no tolerance: the rows of one call go through the same kernels with the
    # same shapes, and a causal model computes its logits at positions ≤ t from identical
    # values (masked attention adds exact zeros), so they agree bit for bit. A tolerance would
    # let a small enough leak through, and the bound profits from any leak.
    for row, t in enumerate(cuts, start=1):
        moved = _differs(logits[row, : t + 1], logits[0, : t + 1]).any(dim=1)
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
    """Per-token losses, forecasts and squared deviations from logits [R, V].

    The [R, V] work arrays are allocated once and reused (in-place operations): fresh
    allocations of this size cost more in page faults than the arithmetic. The passes over the
    vocabulary run in single precision, as the logits are; what a loss needs is summed in
    float64.
    """

    def __init__(self, alphas, top_k, vocab_size: int, device: str) -> None:
        self.alphas, self.top_k, self.vocab_size = alphas, top_k, vocab_size
        ranges = np.array([smoothed_loss_range(a, vocab_size) for a in alphas]).reshape(-1, 2)
        self.low, self.width = ranges[:, 0], ranges[:, 1] - ranges[:, 0]
        self.k = np.array(top_k, dtype=np.int64)
        self.rows_per_chunk = max(1, _CHUNK_BYTES // (8 * vocab_size))
        shape = (self.rows_per_chunk, vocab_size)
        self.index = torch.arange(vocab_size, device=device)
        self.work: dict[torch.dtype, tuple[torch.Tensor, ...]] = {}
        self.bins = torch.empty(shape, dtype=torch.int64, device=device)
        alpha = torch.tensor(alphas, dtype=torch.float64, device=device)[:, None]
        self.kept, self.spread = 1.0 - alpha, alpha / vocab_size  # [A, 1]: p̃ = kept p + spread
        self.above = torch.empty(shape, dtype=torch.bool, device=device)
        self.before = torch.empty(shape, dtype=torch.bool, device=device)

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[np.ndarray, ...]:
        """(ln p of the target, its rank, the entropy forecasts, the top-k masses) for the rows
        of `logits` (at most a chunk); `deviations` turns them into the summed fields."""
        rows = len(logits)
        # Single precision unless the model computes in double: never below the model's own.
        z = logits if logits.dtype == torch.float64 else logits.float()
        shifted, weights, scaled, spare, ones = (array[:rows] for array in self._work(z))
        peak = z.amax(1, keepdim=True)  # NaN if any logit is NaN
        z_target = z.gather(1, targets[:, None])
        # A −∞ logit is a probability of 0, harmless unless it is the target's.
        if not (torch.isfinite(peak).all() and torch.isfinite(z_target).all()):
            raise ValueError(
                "the model returned a non-finite logit (NaN, +inf, or -inf for a target)"
            )
        # ln p_v = (z_v − max z) − ln Σ exp(z − max z)
        torch.sub(z, peak, out=shifted)
        torch.exp(shifted, out=weights)
        total = weights.sum(1, keepdim=True, dtype=torch.float64)
        log_p_target = ((z_target.double() - peak.double()) - total.log())[:, 0]
        rank = self._rank(z, z_target, targets, peak)
        entropy = self._entropy_bits(shifted, weights, total, (scaled, spare, ones))
        if not self.top_k:
            top_mass = total.new_zeros((rows, 0))
        elif self.k.max() == 1:
            # The largest exp(z − max) is exp(0) = 1, so the top-1 mass is p's largest entry
            # 1/Σ exactly, without a pass over the vocabulary.
            top_mass = 1.0 / total
        else:
            top = torch.topk(weights, int(self.k.max()), dim=1).values.double().cumsum(1) / total
            top_mass = top[:, torch.as_tensor(self.k - 1, device=z.device)]
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

    def _work(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Four [rows per chunk, V] work arrays of z's dtype and one of ones, allocated on
        first use."""
        if z.dtype not in self.work:
            shape = (self.rows_per_chunk, self.vocab_size)
            arrays = [torch.empty(shape, dtype=z.dtype, device=z.device) for _ in range(4)]
            self.work[z.dtype] = (*arrays, torch.ones(shape, dtype=z.dtype, device=z.device))
        return self.work[z.dtype]

    def _entropy_bits(self, shifted, weights, total, work) -> torch.Tensor:
        """H(p̃) = −Σ_v p̃_v log₂ p̃_v for every α, [R, A]: exactly (in the logits' precision)
        when V ≤ 512, from a histogram of ln p otherwise.

        The entropy is only the forecast c_t of the Bernstein bound, which may be any function
        of the context computed the same way every time. With no more ids than the histogram
        has bins, the sum over the ids, one α at a time, costs less. Otherwise the ids are put
        in bins b of 1/8 nat by ln p_v − ln max p (the last bin takes everything 64 nats down
        or more); with n_b ids of total probability m_b in bin b, each id is given its bin's
        mean p̄_b = m_b / n_b, so

            H(p̃) ≈ −Σ_b ((1 − α) m_b + α n_b / V) log₂((1 − α) p̄_b + α / V),

        exact when the probabilities within each bin are equal, within about 10⁻³ bits
        otherwise (ln p varies by at most 1/8 within a bin). One pass over the vocabulary
        serves every α. Each row's bins are summed along its own row, so a row's forecast does
        not depend on the rows scored with it.
        """
        rows = len(shifted)
        scaled, spare, ones = work
        if self.vocab_size <= _BINS:
            torch.div(weights, total.to(weights.dtype), out=scaled)  # p
            entropy = total.new_empty((rows, len(self.alphas)))
            for column, alpha in enumerate(self.alphas):
                torch.mul(scaled, 1.0 - alpha, out=shifted).add_(alpha / self.vocab_size)  # p̃
                torch.log(shifted, out=spare)
                entropy[:, column] = torch.linalg.vecdot(shifted, spare).double() / -LN2
            return entropy
        bins = self.bins[:rows]
        torch.mul(shifted, -_BINS_PER_NAT, out=scaled)
        scaled.clamp_(max=_BINS - 1)
        bins.copy_(scaled)  # truncation: the floor of a non-negative number
        histogram = weights.new_zeros((2, rows, _BINS))
        histogram[0].scatter_add_(1, bins, ones)  # n_b
        histogram[1].scatter_add_(1, bins, weights)  # Σ exp(ln p − ln max p) over the bin
        row, column = histogram[0].nonzero().T
        n = histogram[0, row, column].double()
        m = histogram[1, row, column].double() / total[row, 0]
        log_smoothed = torch.log(self.kept * (m / n) + self.spread)  # [A, occupied]
        terms = (self.kept * m + self.spread * n) * log_smoothed
        entropy = terms.new_zeros((len(self.alphas), rows)).index_add_(1, row, terms)
        return (entropy / -LN2).T

    def deviations(self, log_p_target, rank, entropy, top_mass) -> dict[str, np.ndarray]:
        """Per-token values of every summed field (for all the chunks of a batch at once)."""
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
        first, last = rows[part][[0, -1]]
        if last - first == len(rows[part]) - 1:  # consecutive rows: a view, not a copy
            chunk = flat_logits[first : last + 1]
        else:
            chunk = flat_logits[rows_on_device[part]]
        chunks.append(scorer.score(chunk, flat_targets[part]))
    per_row = scorer.deviations(*(np.concatenate(values) for values in zip(*chunks, strict=True)))
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
