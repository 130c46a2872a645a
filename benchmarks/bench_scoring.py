"""Scoring at the speed of the model: `evaluate_lm` against the bare forward pass.

A GPT-2-small-shaped causal LM (12 layers, 12 heads, width 768, 50 257 ids; random weights
from seed 0, built from its config with `bounds.models.hf.causal_lm`; needs transformers)
reads `--windows` windows of `--context` random ids, in batches of `--batch`, on one thread.
Timed on the same windows, in the same process, in alternating rounds (`--repeats`, best of
each):
- forward: the bare forward pass (`model(ids)` under no_grad);
- 1 α, 10 α: `evaluate_lm` (forward plus the scorer: every token's log loss, the smoothed
  losses and entropy forecasts of every α, top-1), with one α and with the default ten;
- scorer: `evaluate_lm` with ten α on a stand-in model that returns the real model's logits,
  computed beforehand: the scorer's own time, without the forward pass.
The ratio is forward time / time (the best round of each): 1.0 means scoring costs nothing on
top of the model; the spread of each over the rounds is printed too. The causality check
(`check_causal`, made once per model whatever the corpus size) is left out of the timed calls
and timed once on its own. The sha256 of the per-window sums shows that the
stand-in scores exactly what the model does, and lets runs be compared for equality.

Run: python benchmarks/bench_scoring.py [--windows 4] [--context 512] [--batch 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time

import numpy as np
import torch

from bounds.formulas.sequence import DEFAULT_ALPHA_GRID
from bounds.models.hf import causal_lm
from bounds.tasks.language.evaluate import check_causal, evaluate_lm
from bounds.tasks.language.tokens import TokenCorpus, token_windows


class Replay:
    """Returns the logits `model` gave for each batch of ids, in the order they were made."""

    def __init__(self, model, windows: torch.Tensor, batch: int) -> None:
        with torch.no_grad():
            self.vocab = model(windows[:1, :1]).logits.shape[2]
            self.logits = {
                tuple(ids[:, 0].tolist()): model(ids).logits for ids in windows.split(batch)
            }

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] == 1:  # evaluate_lm's probe of the vocabulary size
            return torch.zeros(len(ids), 1, self.vocab)
        return self.logits[tuple(ids[:, 0].tolist())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = causal_lm("gpt2", seed=0).eval()
    vocab = model.config.vocab_size
    length = args.context + 1  # one document per window: every token but the first is scored
    ids = np.random.default_rng(0).integers(0, vocab, size=args.windows * length)
    starts = np.arange(args.windows, dtype=np.int64) * length
    corpus = TokenCorpus(ids.astype(np.uint32), starts, starts + length, vocab, "random ids")
    windows = torch.from_numpy(ids.reshape(args.windows, length)[:, :-1].astype(np.int64))
    replay = Replay(model, windows, args.batch)

    def forward() -> None:
        with torch.no_grad():
            for batch in windows.split(args.batch):
                model(batch)

    def scoring(scored_model, alphas) -> str:
        evaluation = evaluate_lm(
            scored_model,
            corpus,
            context=args.context,
            stride=args.context,
            alphas=alphas,
            top_k=(1,),
            batch_size=args.batch,
            causality_check=False,
        )
        digest = hashlib.sha256()
        for name, array in evaluation.arrays().items():
            digest.update(name.encode() + np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    runs = {
        "forward": forward,
        "1 α": lambda: scoring(model, (2**-4,)),
        "10 α": lambda: scoring(model, DEFAULT_ALPHA_GRID),
        "scorer": lambda: scoring(replay, DEFAULT_ALPHA_GRID),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    digests = {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            digests[name] = run()  # None for the bare forward pass
            times[name].append(time.perf_counter() - start)
    best = {name: min(seconds) for name, seconds in times.items()}
    start = time.perf_counter()
    plan = token_windows(corpus, args.context, args.context)
    check_causal(model, corpus, plan, vocab_size=vocab, batch_size=args.batch, device="cpu")
    check = time.perf_counter() - start

    tokens = args.windows * args.context
    print(f"one thread; {tokens} tokens in {args.windows} windows of {args.context}; ", end="")
    print(f"best of {args.repeats}; load average {os.getloadavg()}")
    for name, seconds in best.items():
        per_token = f"{seconds / tokens * 1e6:7.1f} µs/token"
        if name == "scorer":
            ratio = best["forward"] / (best["forward"] + seconds)
            print(f"{name:<8} {seconds:7.2f} s  {per_token}  forward / (forward + it) {ratio:.3f}")
        else:
            print(f"{name:<8} {seconds:7.2f} s  {per_token}  ratio {best['forward'] / seconds:.3f}")
    rounds = ", ".join(f"{name} {min(t):.2f}–{max(t):.2f} s" for name, t in times.items())
    print(f"spread over the rounds: {rounds}")
    print(f"causality check {check:.2f} s (once per model, not in the times above)")
    assert digests["scorer"] == digests["10 α"], "the stand-in must score what the model does"
    print(f"sha256 of the sums (10 α): {digests['10 α']}")


if __name__ == "__main__":
    main()
