"""Scoring at the speed of the model: `evaluate_lm` against the bare forward pass.

A GPT-2-small-shaped causal LM (12 layers, 12 heads, width 768, 50 257 ids; random weights
from seed 0, built from its config with `bounds.models.hf.causal_lm`; needs transformers)
reads `--windows` windows of `--context` random ids, in batches of `--batch`, on one thread.
Timed on the same windows, in the same process, alternating (`--repeats` rounds, best of
each): the bare forward pass (`model(ids)` under no_grad) and `evaluate_lm` (forward plus
the scorer: every token's log-loss, the smoothed losses and entropy forecasts of every α,
top-1), once with one α and once with the default ten. `evaluate_lm` first runs the
causality check (`check_causal`: a fixed number of windows with later tokens replaced, once
per model, whatever the corpus size); its time inside each call is measured and subtracted,
so that the ratio forward time / (scoring time − check) is the per-token scorer's speed as a
fraction of the model's (1.0: scoring costs nothing on top); the check's seconds are printed.
A sha256 of the per-window sums is printed so that runs can be compared for equality.

Run: python benchmarks/bench_scoring.py [--windows 4] [--context 512] [--batch 2]
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
from bounds.tasks.language import evaluate as scoring_module
from bounds.tasks.language.tokens import TokenCorpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = causal_lm("gpt2", seed=0).eval()
    vocab = model.config.vocab_size
    length = args.context + 1  # one document per window: every token but the first is scored
    ids = np.random.default_rng(0).integers(0, vocab, size=args.windows * length)
    starts = np.arange(args.windows, dtype=np.int64) * length
    corpus = TokenCorpus(ids.astype(np.uint32), starts, starts + length, vocab, "random ids")
    windows = torch.from_numpy(ids.reshape(args.windows, length)[:, :-1].astype(np.int64))

    def forward() -> None:
        with torch.no_grad():
            for batch in windows.split(args.batch):
                model(batch)

    def scoring(alphas) -> str:
        evaluation = scoring_module.evaluate_lm(
            model,
            corpus,
            context=args.context,
            stride=args.context,
            alphas=alphas,
            top_k=(1,),
            batch_size=args.batch,
        )
        digest = hashlib.sha256()
        for name, array in evaluation.arrays().items():
            digest.update(name.encode() + np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    checking = [0.0]  # seconds spent in the causality check during the current call
    check = scoring_module.check_causal

    def timed_check(*arguments, **options) -> None:
        start = time.perf_counter()
        check(*arguments, **options)
        checking[0] += time.perf_counter() - start

    scoring_module.check_causal = timed_check

    runs = {
        "forward": forward,
        "1 α": lambda: scoring((2**-4,)),
        "10 α": lambda: scoring(DEFAULT_ALPHA_GRID),
    }
    best = dict.fromkeys(runs, float("inf"))
    checks, digests = [], {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            checking[0] = 0.0
            start = time.perf_counter()
            digests[name] = run()  # None for the bare forward pass
            best[name] = min(best[name], time.perf_counter() - start - checking[0])
            checks += [checking[0]] if checking[0] else []
    tokens = args.windows * args.context
    print(f"one thread; {tokens} tokens in {args.windows} windows of {args.context}; ", end="")
    print(f"load average {os.getloadavg()}")
    print(f"causality check {min(checks):.2f}–{max(checks):.2f} s per call (once per model)")
    for name, seconds in best.items():
        ratio = best["forward"] / seconds
        print(f"{name:<8} {seconds:7.2f} s  {tokens / seconds:7.1f} tokens/s  ratio {ratio:.3f}")
    print(f"sha256 of the sums (10 α): {digests['10 α']}")


if __name__ == "__main__":
    main()
