"""The certificate: everything a reader needs to trust, re-check and print a bound.

One type for every task. Its bounds are rows (loss, method), each a `Bound` with its own
terms and δ shares, each a claim at δ; the headline (loss, method) is fixed by the task in
advance. JSON schema (``schema_version`` 2), all numbers plain JSON numbers:

- ``task``: name and settings (what `bounds.reproduce` needs to evaluate again).
- ``claim``: the sentence the certificate supports; ``delta``; ``headline`` (loss, method).
- ``data``: what was evaluated (n, or a corpus's documents, tokens, windows, subsample).
- ``train``: ``float`` and ``decoded`` summaries; each has ``losses`` (loss → empirical mean).
- ``code``: bits (K), num_params (numbers in the word), model_params (parameters of the
  evaluated network; for a subspace model, of the wrapped network), bits_per_param,
  breakdown (bits by part, summing to K), config, grid_index, sha256 of the code word.
- ``grid``: size, fingerprint (sha256) and the configurations (declared before the data).
- ``candidates``: every configuration tried, with its bits, and for those evaluated on the
  whole training set their losses and headline bound (``screen``: its subsample estimate).
- ``search``: the rule that chose among them, how many full evaluations it made, and whether
  every candidate left out was ruled out (``settled``) or the choice was made on the estimate.
- ``bounds``: {loss: {method: ``bounds.Bound.to_dict()``}}, all about the decoded model;
  ``risks``: what each method bounds.
- ``test``: null or {summary, bounds: {loss: Bound}} on held-out data (own claims at δ).
- ``prior``: fingerprint, description and the architecture the decoder builds;
  ``architecture``: its spec.
- ``qat``, ``timings`` (seconds by stage), ``versions``; ``invocation``: the command-line
  specs it was made from (model file, architecture, data, prior, ...), which `bounds verify`
  uses by default.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bounds.formulas.result import Bound
from bounds.reports.latex import latex_escape

SCHEMA_VERSION = 2


def prior_caveat(prior: Mapping[str, Any]) -> str:
    """What the claim rests on beyond the draw of the data, for a prior the user supplied."""
    what = {"reference": "reference θ0", "base": "base checkpoint"}.get(prior.get("kind"))
    if what is None:
        return ""
    return (
        f" It holds only if the {what} (sha256 fingerprint {prior.get('fingerprint')}) was "
        "fixed before the training data was seen."
    )


def shown(bound: Bound) -> str:
    """A bound as printed for people: a value at or above the loss's range is vacuous."""
    if bound.vacuous:
        return f"vacuous (≥ {bound.loss_range[1]:.4g})"
    return f"{bound.value:.4f}"


def search_summary(search: Mapping[str, Any], grid_size: int) -> str:
    """How the word was chosen from the grid, in one line."""
    full = search["full_evaluations"]
    if search["rule"] != "screened":
        return f"{full} of {grid_size} candidates evaluated on the training set (exhaustive)"
    text = (
        f"{grid_size} candidates ranked on {search['sample']:,} "
        f"{search.get('sample_unit', 'training examples')}, {full} evaluated in full"
    )
    if search["settled"]:
        return text + "; no other could beat the chosen one by more than 0.0001"
    others = ", ".join(str(index) for index in search["not_excluded"])
    return text + f"; chosen on the estimate (candidates {others} were not ruled out)"


@dataclass(frozen=True)
class Certificate:
    """Certified bounds on a decoded model's losses, with the full breakdown."""

    task: str
    task_settings: dict[str, Any]
    claim: str
    data: dict[str, Any]
    train: dict[str, dict[str, Any]]
    bounds: dict[str, dict[str, Bound]]
    headline: tuple[str, str]
    labels: dict[str, str]
    risks: dict[str, str]
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
    data_rows: list[tuple[str, str]] = field(default_factory=list)
    test: dict[str, Any] | None = None
    qat: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    invocation: dict[str, Any] = field(default_factory=dict)
    code: Any = field(default=None, compare=False, repr=False)

    @property
    def best(self) -> Bound:
        """The headline bound, chosen by the task before any number was seen."""
        loss, method = self.headline
        return self.bounds[loss][method]

    @property
    def bits_per_param(self) -> float:
        """K per parameter of the network that is evaluated (its size, whatever is coded)."""
        return self.code_bits / self.model_params if self.model_params else 0.0

    def train_loss(self, which: str = "decoded", loss: str | None = None) -> float:
        """The empirical `loss` (default: the headline's) of the float or decoded model."""
        return self.train[which]["losses"][loss or self.headline[0]]

    def test_loss(self, loss: str | None = None) -> float | None:
        """The decoded model's held-out `loss` (default: the headline's), or None."""
        if self.test is None:
            return None
        return self.test["summary"]["losses"][loss or self.headline[0]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "task": {"name": self.task, "settings": self.task_settings},
            "claim": self.claim,
            "delta": self.delta,
            "headline": {"loss": self.headline[0], "method": self.headline[1]},
            "data": self.data,
            "architecture": self.architecture,
            "prior": self.prior,
            "train": self.train,
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
            "risks": self.risks,
            "bounds": {
                loss: {method: bound.to_dict() for method, bound in by_method.items()}
                for loss, by_method in self.bounds.items()
            },
            "test": None
            if self.test is None
            else {
                "summary": self.test["summary"],
                "bounds": {loss: bound.to_dict() for loss, bound in self.test["bounds"].items()},
            },
            "qat": self.qat,
            "search": self.search,
            "timings": self.timings,
            "versions": self.versions,
            "invocation": self.invocation,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def bound_rows(self) -> list[list[str]]:
        """Header, then one row per loss: float and decoded training loss, every method."""
        methods = list(dict.fromkeys(m for by_method in self.bounds.values() for m in by_method))
        rows = [["loss", "float train", "decoded train", *methods]]
        for loss, by_method in self.bounds.items():
            empirical = [self.train_loss("float", loss), self.train_loss("decoded", loss)]
            rows.append(
                [self.labels.get(loss, loss), *(f"{value:.4f}" for value in empirical)]
                + [shown(by_method[m]) if m in by_method else "" for m in methods]
            )
        return rows

    def summary_rows(self) -> list[tuple[str, str]]:
        """(quantity, value) pairs shared by the table, Markdown and LaTeX renderings."""
        rows = [
            ("network parameters", f"{self.model_params:,}"),
            ("numbers coded", f"{self.num_params:,}"),
            ("code length K", f"{self.code_bits:,} bits ({self.bits_per_param:.4g} bits/param)"),
        ]
        rows += [(f"  {part}", f"{bits:,} bits") for part, bits in self.code_breakdown.items()]
        rows.append(("configuration", ", ".join(f"{k}={v}" for k, v in self.code_config.items())))
        rows += self.data_rows
        if self.test is not None:
            for loss, bound in self.test["bounds"].items():
                label = self.labels.get(loss, loss)
                rows.append((f"held-out {label}", f"{self.test_loss(loss):.4f}"))
                rows.append((f"held-out {label} bound (own claim)", shown(bound)))
        rows += [
            ("δ", f"{self.delta:g} (each bound is a claim at this δ)"),
            ("prior fingerprint", self.prior.get("fingerprint") or "none"),
            ("grid", f"{len(self.grid)} configurations, sha256 {self.grid_fingerprint[:16]}…"),
        ]
        if self.search:
            rows.append(("search", search_summary(self.search, len(self.grid))))
        return rows

    def to_markdown(self) -> str:
        lines = [f"**{self.claim}**", ""]
        table = self.bound_rows()
        lines += ["| " + " | ".join(table[0]) + " |", "|---" + "|--:" * (len(table[0]) - 1) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
        rows = self.summary_rows()
        # The K breakdown (the indented rows) goes to a table of its own under the summary.
        lines += ["", "| quantity | value |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in rows if not name.startswith(" ")]
        lines += ["", "| part of K | bits |", "|---|--:|"]
        lines += [
            f"| {name.strip()} | {value.removesuffix(' bits')} |"
            for name, value in rows
            if name.startswith(" ")
        ]
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        table = self.bound_rows()
        columns = "l" + "r" * (len(table[0]) - 1)
        lines = [rf"\begin{{tabular}}{{{columns}}}", r"\hline"]
        lines.append(" & ".join(latex_escape(cell) for cell in table[0]) + r" \\")
        lines.append(r"\hline")
        lines += [" & ".join(latex_escape(cell) for cell in row) + r" \\" for row in table[1:]]
        lines += [r"\hline", r"\end{tabular}", "", r"\begin{tabular}{ll}", r"\hline"]
        lines += [
            f"{latex_escape(n.strip())} & {latex_escape(v)} \\\\" for n, v in self.summary_rows()
        ]
        lines += [r"\hline", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
