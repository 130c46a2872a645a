"""Timing of the bound formulas' inner routines.

Targets (issue: the bound formulas): 10⁶ kl_inv evaluations with random (q, c) under 1 s;
binom_tail_inv for n = 10⁶, k = 10⁴, ln δ = −10⁵ under 50 ms.

Run: python benchmarks/bench_formulas.py
Each figure is the best of several repetitions (wall clock, time.perf_counter).
"""

from __future__ import annotations

import time

import numpy as np

from bounds import binom_tail_inv, kl_inv


def best_time(function, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    q = rng.random(10**6)
    c = rng.random(10**6) * 2.0
    seconds = best_time(lambda: kl_inv(q, c), repeat=5)
    print(f"kl_inv, 10^6 random (q in [0,1), c in [0,2)):    {seconds:.3f} s   (target < 1 s)")
    c_wide = 10 ** rng.uniform(-8, 1, 10**6)
    seconds = best_time(lambda: kl_inv(q, c_wide), repeat=5)
    print(f"kl_inv, 10^6 random (c log-uniform in [1e-8,10]): {seconds:.3f} s   (target < 1 s)")
    seconds = best_time(lambda: binom_tail_inv(10**6, 10**4, -1e5), repeat=20)
    value = binom_tail_inv(10**6, 10**4, -1e5)
    print(
        f"binom_tail_inv(n=10^6, k=10^4, ln δ=-10^5) = {value:.6f}: "
        f"{seconds * 1e3:.1f} ms   (target < 50 ms)"
    )


if __name__ == "__main__":
    main()
