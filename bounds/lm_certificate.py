"""The language-model certificate: bits-per-token and top-k bounds side by side.

JSON (``schema_version`` 1, ``task`` "lm"): ``claim``; ``delta``; ``corpus`` (source,
documents n, scored tokens m, context, stride, vocabulary, subsample size and seed, evaluation
batch size: everything `bounds.lm_pipeline.reproduce_lm` needs to score the corpus again);
``train`` (float and decoded model: bits per token, smoothed bits per α, top-k error rates,
on the evaluated documents); ``bounds`` ({loss: {method: Bound}}, loss "bits" or "topK",
methods bounds.lm_bounds.LM_METHODS; each is its own claim at δ); ``risks`` (what each method
bounds); ``test`` or null; ``code``, ``grid``, ``candidates``, ``prior``, ``architecture``,
``timings``, ``versions`` as in bounds.certificate.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .certificate import prior_caveat
from .latex import latex_escape
from .lm_bounds import LM_METHODS
from .result import Bound

SCHEMA_VERSION = 1

RISKS = {
    "document_kl": "expected loss of a new document (mean over its tokens); documents i.i.d.",
    "document_hoeffding": "as document_kl, Hoeffding form",
    "token_azuma": "mean over the m training tokens of E[loss | preceding tokens] (sequential)",
    "token_bernstein": "as token_azuma, variance-adaptive (empirical Bernstein)",
}
METHOD_LABELS = {
    "document_kl": "document kl",
    "document_hoeffding": "document Hoeffding",
    "token_azuma": "token Azuma",
    "token_bernstein": "token Bernstein",
}


@dataclass(frozen=True)
class LossSummary:
    """Token-weighted losses over the evaluated documents."""

    documents: int
    tokens: int
    bits: float
    smoothed_bits: dict[float, float]
    top_k_error: dict[int, float]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["smoothed_bits"] = {str(k): v for k, v in self.smoothed_bits.items()}
        data["top_k_error"] = {str(k): v for k, v in self.top_k_error.items()}
        return data


def loss_label(loss: str) -> str:
    return "bits per token" if loss == "bits" else f"top-{loss.removeprefix('top')} error"


@dataclass(frozen=True)
class LMCertificate:
    """Certified bounds on a decoded language model's losses, with the full breakdown."""

    train_float: LossSummary
    train_quantized: LossSummary
    corpus: dict[str, Any]
    alphas: tuple[float, ...]
    top_k: tuple[int, ...]
    bounds: dict[str, dict[str, Bound]]
    code_bits: int
    model_params: int
    code_breakdown: dict[str, int]
    code_config: dict[str, Any]
    code_sha256: str
    grid: list[dict[str, Any]]
    grid_fingerprint: str
    candidates: list[dict[str, Any]]
    prior: dict[str, Any]
    architecture: str
    delta: float
    test: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    code: Any = field(default=None, compare=False, repr=False)

    @property
    def best(self) -> Bound:
        """The headline: the token-level Bernstein bound on bits per token."""
        return self.bounds["bits"]["token_bernstein"]

    @property
    def bits_per_param(self) -> float:
        return self.code_bits / self.model_params if self.model_params else 0.0

    @property
    def claim(self) -> str:
        best = self.best
        return (
            f"With probability at least {1 - self.delta:g}, the decoded model's average "
            f"conditional loss over the {self.corpus['scored_tokens']} training tokens is at "
            f"most {best.value:.4f} bits per token (smoothed with α = {best.terms['alpha']:g}; "
            f"token-level Bernstein bound, K = {self.code_bits} bits)." + prior_caveat(self.prior)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "task": "lm",
            "claim": self.claim,
            "delta": self.delta,
            "corpus": self.corpus,
            "alphas": list(self.alphas),
            "top_k": list(self.top_k),
            "architecture": self.architecture,
            "prior": self.prior,
            "train": {
                "float": self.train_float.to_dict(),
                "quantized": self.train_quantized.to_dict(),
            },
            "code": {
                "bits": self.code_bits,
                "model_params": self.model_params,
                "bits_per_param": self.bits_per_param,
                "breakdown": self.code_breakdown,
                "config": self.code_config,
                "sha256": self.code_sha256,
            },
            "grid": {
                "size": len(self.grid),
                "fingerprint": self.grid_fingerprint,
                "configs": self.grid,
            },
            "candidates": self.candidates,
            "risks": RISKS,
            "bounds": {
                loss: {method: bound.to_dict() for method, bound in by_method.items()}
                for loss, by_method in self.bounds.items()
            },
            "test": None
            if self.test is None
            else {
                "summary": self.test["summary"].to_dict(),
                "bounds": {loss: bound.to_dict() for loss, bound in self.test["bounds"].items()},
            },
            "timings": self.timings,
            "versions": self.versions,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def bound_rows(self) -> list[list[str]]:
        """Header, then one row per loss: empirical value and every method's bound."""
        header = ["loss", "float train", "decoded train", *(METHOD_LABELS[m] for m in LM_METHODS)]
        rows = [header]
        for loss, by_method in self.bounds.items():
            if loss == "bits":
                alpha = self.best.terms["alpha"]
                empirical = [self.train_float.bits, self.train_quantized.bits]
                label = f"bits per token (bounds: α-smoothed, best α; α* = {alpha:g})"
            else:
                k = int(loss.removeprefix("top"))
                empirical = [self.train_float.top_k_error[k], self.train_quantized.top_k_error[k]]
                label = loss_label(loss)
            rows.append(
                [label, *(f"{v:.4f}" for v in empirical)]
                + [f"{by_method[m].value:.4f}" for m in LM_METHODS]
            )
        return rows

    def summary_rows(self) -> list[tuple[str, str]]:
        corpus = self.corpus
        sampled = corpus["subsample"]
        rows = [
            ("network parameters", f"{self.model_params:,}"),
            ("code length K", f"{self.code_bits:,} bits ({self.bits_per_param:.4g} bits/param)"),
        ]
        rows += [(f"  {part}", f"{bits:,} bits") for part, bits in self.code_breakdown.items()]
        rows += [
            ("configuration", ", ".join(f"{k}={v}" for k, v in self.code_config.items())),
            ("documents n", f"{corpus['documents']:,}"),
            ("scored tokens m", f"{corpus['scored_tokens']:,}"),
            ("context / stride", f"{corpus['context']} / {corpus['stride']}"),
            (
                "evaluated",
                "every token"
                if not sampled
                else f"{sampled} documents drawn twice (seed {corpus['subsample_seed']}), "
                f"{self.train_quantized.documents} distinct",
            ),
        ]
        if self.test is not None:
            summary = self.test["summary"]
            rows += [
                ("held-out bits per token", f"{summary.bits:.4f} ({summary.tokens:,} tokens)"),
            ]
            rows += [
                (f"held-out top-{k} error", f"{rate:.4f}")
                for k, rate in summary.top_k_error.items()
            ]
            rows += [
                (f"held-out {loss_label(loss)} bound (own claim)", f"{bound.value:.4f}")
                for loss, bound in self.test["bounds"].items()
            ]
        rows += [
            ("δ", f"{self.delta:g} (each bound is a claim at this δ)"),
            ("prior fingerprint", self.prior.get("fingerprint") or "none"),
        ]
        return rows

    def to_markdown(self) -> str:
        lines = [f"**{self.claim}**", ""]
        table = self.bound_rows()
        lines += ["| " + " | ".join(table[0]) + " |", "|---" + "|--:" * (len(table[0]) - 1) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
        lines += ["", "| quantity | value |", "|---|---|"]
        lines += [f"| {name.strip()} | {value} |" for name, value in self.summary_rows()]
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        table = self.bound_rows()
        columns = "l" + "r" * (len(table[0]) - 1)
        lines = [rf"\begin{{tabular}}{{{columns}}}", r"\hline"]
        lines += [" & ".join(latex_escape(cell) for cell in row) + r" \\" for row in table[:1]]
        lines.append(r"\hline")
        lines += [" & ".join(latex_escape(cell) for cell in row) + r" \\" for row in table[1:]]
        lines += [r"\hline", r"\end{tabular}", "", r"\begin{tabular}{ll}", r"\hline"]
        lines += [
            f"{latex_escape(n.strip())} & {latex_escape(v)} \\\\" for n, v in self.summary_rows()
        ]
        lines += [r"\hline", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
