"""The certificate: everything a reader needs to trust, re-check and print a bound.

JSON schema (``schema_version`` 1), all numbers plain JSON numbers:

- ``claim``: the sentence the certificate supports; ``delta``, ``delta_shares``.
- ``train``: n, float and quantized errors, error rates and mean cross-entropy (nats).
- ``code``: bits (K), num_params (numbers in the word), model_params (parameters of the
  evaluated network; for a subspace model, of the wrapped network), bits_per_param
  (K / model_params), breakdown (bits by part, summing to K), config,
  grid_index, sha256 of the code word.
- ``grid``: size, fingerprint (sha256) and the configurations (declared before the data).
- ``candidates``: every configuration tried, with its bits, training errors and bound.
- ``bounds``: one entry per method (``bounds.Bound.to_dict()``), all about the decoded model.
- ``test``: m, errors, error rate and the test-set bound (its own claim), or null.
- ``prior``: fingerprint and description; ``architecture``: how the model was built.
- ``qat``, ``timings`` (seconds by stage), ``versions``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .latex import latex_escape
from .result import Bound

SCHEMA_VERSION = 1


def prior_caveat(prior: Mapping[str, Any]) -> str:
    """What the claim rests on beyond the draw of the data, for a prior the user supplied."""
    what = {"reference": "reference θ0", "base": "base checkpoint"}.get(prior.get("kind"))
    if what is None:
        return ""
    return (
        f" It holds only if the {what} (sha256 fingerprint {prior.get('fingerprint')}) was "
        "fixed before the training data was seen."
    )


@dataclass(frozen=True)
class TrainResult:
    """Training-set evaluation of the float model and of the decoded (quantized) model."""

    n: int
    float_errors: int
    quantized_errors: int
    float_loss: float
    quantized_loss: float

    @property
    def float_error_rate(self) -> float:
        return self.float_errors / self.n

    @property
    def quantized_error_rate(self) -> float:
        return self.quantized_errors / self.n

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["float_error_rate"] = self.float_error_rate
        data["quantized_error_rate"] = self.quantized_error_rate
        return data


@dataclass(frozen=True)
class TestResult:
    """Held-out evaluation of the decoded model and its test-set bound."""

    m: int
    errors: int
    loss: float
    bound: Bound

    __test__ = False  # not a pytest class

    @property
    def error_rate(self) -> float:
        return self.errors / self.m

    def to_dict(self) -> dict[str, Any]:
        return {
            "m": self.m,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "loss": self.loss,
            "bound": self.bound.to_dict(),
        }


@dataclass(frozen=True)
class Certificate:
    """A certified bound on the decoded model's true error, with its full breakdown."""

    train: TrainResult
    bounds: dict[str, Bound]
    code_bits: int
    num_params: int
    model_params: int
    code_breakdown: dict[str, int]
    code_config: dict[str, Any]
    code_sha256: str
    grid_index: int
    grid: list[dict[str, Any]]
    grid_fingerprint: str
    candidates: list[dict[str, Any]]
    prior: dict[str, Any]
    architecture: str
    delta: float
    test: TestResult | None = None
    qat: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    code: Any = field(default=None, compare=False, repr=False)

    @property
    def bits_per_param(self) -> float:
        """K per parameter of the network that is evaluated (its size, whatever is coded)."""
        return self.code_bits / self.model_params if self.model_params else 0.0

    @property
    def best(self) -> Bound:
        """The headline bound: the first of binomial, kl, catoni, hoeffding that was computed.

        That order is fixed in advance and is also the order of tightness (the exact tail
        inversion is never looser than its Chernoff relaxation kl, which is never looser
        than Catoni's or Hoeffding's form), so no choice among methods is made after
        seeing the numbers.
        """
        for method in ("binomial", "kl", "catoni", "hoeffding"):
            if method in self.bounds:
                return self.bounds[method]
        raise ValueError("the certificate holds no bound")

    @property
    def claim(self) -> str:
        best = self.best
        return (
            f"With probability at least {1 - self.delta:g} over the draw of the "
            f"{self.train.n} training examples, the decoded model's true error is at most "
            f"{best.value:.4f} ({best.method} Occam bound, K = {self.code_bits} bits)."
            + prior_caveat(self.prior)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "claim": self.claim,
            "delta": self.delta,
            "delta_shares": {"occam": self.delta},
            "architecture": self.architecture,
            "prior": self.prior,
            "train": self.train.to_dict(),
            "code": {
                "bits": self.code_bits,
                "num_params": self.num_params,
                "model_params": self.model_params,
                "bits_per_param": self.bits_per_param,
                "breakdown": self.code_breakdown,
                "config": self.code_config,
                "grid_index": self.grid_index,
                "sha256": self.code_sha256,
            },
            "grid": {
                "size": len(self.grid),
                "fingerprint": self.grid_fingerprint,
                "configs": self.grid,
            },
            "candidates": self.candidates,
            "bounds": [bound.to_dict() for bound in self.bounds.values()],
            "test": None if self.test is None else self.test.to_dict(),
            "qat": self.qat,
            "timings": self.timings,
            "versions": self.versions,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def summary_rows(self) -> list[tuple[str, str]]:
        """(quantity, value) pairs shared by the table, Markdown and LaTeX renderings."""
        train = self.train
        rows = [
            ("network parameters", f"{self.model_params:,}"),
            ("numbers coded", f"{self.num_params:,}"),
            ("code length K", f"{self.code_bits:,} bits ({self.bits_per_param:.4g} bits/param)"),
        ]
        rows += [(f"  {part}", f"{bits:,} bits") for part, bits in self.code_breakdown.items()]
        rows += [
            ("configuration", ", ".join(f"{k}={v}" for k, v in self.code_config.items())),
            ("training examples n", f"{train.n:,}"),
            ("float train error", f"{train.float_error_rate:.4f} ({train.float_errors})"),
            (
                "quantized train error",
                f"{train.quantized_error_rate:.4f} ({train.quantized_errors})",
            ),
        ]
        if self.test is not None:
            rows += [
                ("test error", f"{self.test.error_rate:.4f} ({self.test.errors}/{self.test.m})"),
                ("test-set bound (own claim)", f"{self.test.bound.value:.4f}"),
            ]
        rows += [(f"{name} bound", f"{bound.value:.4f}") for name, bound in self.bounds.items()]
        rows += [
            ("δ shares", f"occam {self.delta:g} (each bound row is a claim at this δ)"),
            ("prior fingerprint", self.prior.get("fingerprint", "none")),
            ("grid", f"{len(self.grid)} configurations, sha256 {self.grid_fingerprint[:16]}…"),
        ]
        return rows

    def to_markdown(self) -> str:
        lines = [f"**{self.claim}**", "", "| quantity | value |", "|---|---|"]
        lines += [f"| {name.strip()} | {value} |" for name, value in self.summary_rows()]
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        lines = [r"\begin{tabular}{ll}", r"\hline", r"Quantity & Value \\", r"\hline"]
        lines += [
            f"{latex_escape(n.strip())} & {latex_escape(v)} \\\\" for n, v in self.summary_rows()
        ]
        lines += [r"\hline", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
