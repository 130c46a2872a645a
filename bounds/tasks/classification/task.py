"""Classification: n labelled examples, the 0-1 error, Occam bounds (Langford 2005, Thm 4.1).

With probability ≥ 1 − δ over n i.i.d. examples, simultaneously for every hypothesis h of a
prefix-free code of K(h) bits, R(h) ≤ Bin⁻¹(n, k_h, ln δ − K ln 2) (and its kl, Catoni and
Hoeffding relaxations, `bounds.formulas.occam`). Held-out data gets the test-set bound
R ≤ Bin⁻¹(m, k, ln δ) (Langford 2005, Thm 3.3).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bounds.formulas.occam import OCCAM_METHODS, occam_bound
from bounds.formulas.result import Bound
from bounds.formulas.test_set import test_set_bound

DEFAULT_METHODS = ("binomial", "kl", "catoni")
#: Codebook sizes of the default grid.
DEFAULT_LEVELS = (3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
#: Training examples the search screens every candidate on (`screen`).
SCREEN_EXAMPLES = 2048


def occam_bounds(n: int, code_bits: int, errors: int, delta: float, methods) -> dict[str, Bound]:
    """Every requested Occam bound for k errors out of n with a K-bit code."""
    unknown = set(methods) - set(OCCAM_METHODS)
    if unknown or not methods:
        raise ValueError(f"methods must be a non-empty subset of {OCCAM_METHODS}")
    return {m: occam_bound(n, code_bits, delta, errors=errors, method=m) for m in methods}


@dataclass(frozen=True)
class Classification:
    """Argmax errors of a model mapping inputs [B, ...] to logits [B, C] on labelled data.

    The headline is the binomial Occam bound, which is never looser than the others (the
    exact tail inversion is below its Chernoff relaxation kl, which is below Catoni's and
    Hoeffding's forms), so no choice among methods is made after seeing the numbers.
    """

    methods: tuple[str, ...] = DEFAULT_METHODS
    batch_size: int = 1024
    device: str = field(default="cpu", compare=False)
    quiet: bool = field(default=True, compare=False)

    name = "classify"
    labels = {"error": "error"}
    risks = {method: "true error of the decoded model (0-1 loss)" for method in OCCAM_METHODS}

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        occam_bounds(1, 0, 0, 0.5, self.methods)  # validate before any work

    @property
    def headline(self) -> tuple[str, str]:
        for method in ("binomial", "kl", "catoni", "hoeffding"):
            if method in self.methods:
                return "error", method
        raise ValueError("no Occam method to head the certificate")

    def settings(self) -> dict[str, Any]:
        return {"methods": list(self.methods), "batch_size": self.batch_size}

    def default_grid(self) -> list[dict[str, Any]]:
        """DEFAULT_LEVELS × k-means or uniform × one codebook or one per tensor (40
        configurations; 6 bits of the word). Chosen over 4, 8, 16, 32 levels (16, 4 bits) by
        `benchmarks/bench_grid.py`: tighter on every model measured, and with the screened
        search faster than the exhaustive search of the smaller grid."""
        from quantize import product_grid

        return product_grid(levels=DEFAULT_LEVELS, schemes=("kmeans", "uniform"))

    def prepare(self, data: Any, candidates: int) -> Any:
        return data

    def evaluate(self, model: Any, data: Any, description: str) -> Any:
        from bounds.tasks.classification.evaluate import evaluate

        return evaluate(
            model,
            data,
            device=self.device,
            batch_size=self.batch_size,
            quiet=self.quiet,
            description=description,
        )

    def bounds(
        self, data: Any, evaluation: Any, code_bits: int, delta: float
    ) -> dict[str, dict[str, Bound]]:
        errors = evaluation.errors
        return {"error": occam_bounds(evaluation.n, code_bits, errors, delta, self.methods)}

    def floor(self, data: Any, evaluation: Any, code_bits: int, delta: float) -> float:
        return occam_bound(evaluation.n, code_bits, delta, errors=0, method=self.headline[1]).value

    def screen(self, data: Any, evaluation: Any, delta: float, *, seed: int, miss: float) -> Any:
        """Per-example errors on s = SCREEN_EXAMPLES training examples drawn without
        replacement (seed `seed`): a cheap estimate of a candidate's headline bound.

        Estimate: n·e/s errors. Optimistic: a lower confidence limit of its full-set errors,
        either
        n·p_L(e) (Clopper–Pearson at `miss`) or, against the best candidate b evaluated in
        full with k_b errors, k_b + n·p_L(a) − n·p_U(d) from the sample's discordant examples
        (a: it errs where b does not; d: the other way; each limit at miss/2), which is far
        tighter because quantized copies of one model err on nearly the same examples. None
        when the subsample would be the whole set (`evaluation` is the float model's, for n).
        """
        import math

        import numpy as np
        from torch.utils.data import DataLoader, Subset

        from bounds.formulas.binomial import binomial_lower_limit
        from bounds.pipeline.search import Screen
        from bounds.tasks.classification.evaluate import as_loader, example_errors

        n, method, size = evaluation.n, self.headline[1], SCREEN_EXAMPLES
        if size >= n:
            return None
        indices = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
        loader = as_loader(data, self.batch_size)
        # Loaded once, as one batch: every candidate is scored on these same tensors.
        whole = DataLoader(
            Subset(loader.dataset, indices.tolist()), batch_size=size, collate_fn=loader.collate_fn
        )
        sample = next(iter(whole))
        if isinstance(sample, list):
            sample = tuple(sample)

        def bound(bits: int, errors: float) -> float:
            errors = min(n, max(0, math.floor(errors)))
            return occam_bound(n, bits, delta, errors=errors, method=method).value

        def optimistic(bits: int, wrong: np.ndarray, best: tuple | None) -> float:
            if best is None:
                return bound(bits, n * binomial_lower_limit(int(wrong.sum()), size, miss))
            best_wrong, best_full = best
            gained = int((wrong & ~best_wrong).sum())
            lost = int((best_wrong & ~wrong).sum())
            low = binomial_lower_limit(gained, size, miss / 2)
            high = 1.0 - binomial_lower_limit(size - lost, size, miss / 2)
            return bound(bits, best_full.errors + n * low - math.ceil(n * high))

        return Screen(
            evaluate=lambda model: example_errors(
                model, sample, device=self.device, batch_size=self.batch_size
            ),
            estimate=lambda bits, wrong: bound(bits, round(wrong.mean() * n)),
            optimistic=optimistic,
            describe=lambda wrong: {"n": size, "losses": {"error": float(wrong.mean())}},
            size=size,
            seed=seed,
            miss=miss,
        )

    def summary(self, evaluation: Any) -> dict[str, Any]:
        return {
            "n": evaluation.n,
            "errors": evaluation.errors,
            "cross_entropy": evaluation.mean_loss,
            "losses": {"error": evaluation.error_rate},
        }

    def held_out(
        self, data: Any, evaluation: Any, bounds: Mapping[str, Mapping[str, Bound]], delta: float
    ) -> dict[str, Bound]:
        return {"error": test_set_bound(evaluation.n, evaluation.errors, delta)}

    def describe(self, data: Any, evaluation: Any) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        return {"n": evaluation.n}, [("training examples n", f"{evaluation.n:,}")]

    def claim(self, bound: Bound, data: Mapping[str, Any], code_bits: int, delta: float) -> str:
        return (
            f"With probability at least {1 - delta:g} over the draw of the {data['n']} "
            f"training examples, the decoded model's true error is at most {bound.value:.4f} "
            f"({bound.method} Occam bound, K = {code_bits} bits)."
        )

    def training_loader(self, data: Any, seed: int = 0):
        """The shuffled loader quantization-aware fine-tuning trains on (seeded order)."""
        import torch
        from torch.utils.data import DataLoader

        from bounds.tasks.classification.evaluate import as_loader

        order = torch.Generator().manual_seed(seed)
        return DataLoader(as_loader(data).dataset, batch_size=256, shuffle=True, generator=order)
