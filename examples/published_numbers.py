"""Reproduce published bound values from their inputs with the formula API alone.

Each line states the inputs as published and the value this library computes; no model
is needed. Run: python examples/published_numbers.py

- Langford (2005), "Tutorial on practical prediction theory for classification", JMLR 6:
  the test-set bound for 100 errors on 10 000 held-out examples at δ = 0.05 is 0.0118.
- The same tutorial's kl form of that bound: kl⁻¹(0.01, ln(1/0.05)/10 000) = 0.0126.
- A compressed LeNet-5 on MNIST (n = 60 000, 1.5% training error) whose code takes 32 413
  nats: kl⁻¹(0.015, (32 413 + ln 20)/60 000) = 0.4598, the Occam kl bound at δ = 0.05 (inputs
  of the kind reported for compressed LeNet-5 models, cf. Zhou et al. 2019, "Non-vacuous
  generalization bounds at ImageNet scale: a PAC-Bayesian compression approach", ICLR).
"""

from __future__ import annotations

import math

import bounds

ROWS = [
    ("test-set bound, 100 errors / 10 000, δ=0.05", 0.011797,
     bounds.test_set_bound(10000, 100, 0.05).value),
    ("kl⁻¹(0.01, ln 20 / 10 000)", 0.012635,
     float(bounds.kl_inv(0.01, math.log(20) / 10000))),
    ("LeNet-5 MNIST, Occam kl with K ln 2 = 32 413 nats", 0.45975,
     bounds.occam_bound(60000, 32413 / math.log(2), 0.05, errors=900, method="kl").value),
]  # fmt: skip


def main() -> None:
    width = max(len(name) for name, _, _ in ROWS)
    print(f"{'quantity':<{width}}  published  computed")
    for name, published, computed in ROWS:
        print(f"{name:<{width}}  {published:<9.6g}  {computed:.6f}")
    # The binomial form of the LeNet-5 bound is a little tighter than its kl relaxation.
    binomial = bounds.occam_bound(60000, 32413 / math.log(2), 0.05, errors=900)
    print(
        f"{'LeNet-5 MNIST, Occam binomial (same inputs)':<{width}}  {'':<9}  {binomial.value:.6f}"
    )


if __name__ == "__main__":
    main()
