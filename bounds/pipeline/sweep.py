"""A sweep: certify a family of models (e.g. growing widths) on the same training data.

Each model is certified by :func:`bounds.pipeline.certify.certify`. Two kinds of claim:

- separate (default): every row is its own claim at confidence 1 − δ; the rows are not
  claimed to hold together, so a reader may not pick the best row after looking.
- simultaneous: the δ budget is split evenly over the M models through the δ ledger, each
  row is certified at δ/M, and by the union bound every row holds at once with probability
  at least 1 − δ (Langford 2005, §4: a union over M countable-hypothesis bounds).

JSON schema (``schema_version`` 1): ``claim``, ``simultaneous``, ``delta``,
``delta_shares`` (model name → the δ its row is certified at; these sum to δ when
simultaneous), ``n`` (training examples), ``methods``, and ``rows`` sorted by network
parameters, each with name, model_params (network parameters), num_params (numbers
coded), code_bits, bits_per_param (K / model_params), float/quantized training
error rates, test error rate (or null), ``bounds`` (method → value) and the full
``certificate`` (``Certificate.to_dict()``).

Importing this module does not import torch; :func:`sweep` loads the pipeline on use.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bounds.formulas.ledger import Ledger
from bounds.reports.certificate import Certificate
from bounds.reports.latex import latex_escape

if TYPE_CHECKING:
    from torch import nn

SCHEMA_VERSION = 1

#: certify() arguments a sweep sets itself; per-model overrides may not touch them.
_SWEEP_OWNED = ("delta", "test_data")


def headline_bounds(certificate: Certificate) -> dict[str, Any]:
    """The bounds of the certificate's headline loss, by method."""
    return certificate.bounds[certificate.headline[0]]


@dataclass(frozen=True)
class SweepRow:
    """One model of the sweep and its certificate."""

    name: str
    certificate: Certificate

    @property
    def test_error(self) -> float | None:
        return self.certificate.test_loss()

    def to_dict(self) -> dict[str, Any]:
        cert = self.certificate
        return {
            "name": self.name,
            "model_params": cert.model_params,
            "num_params": cert.num_params,
            "code_bits": cert.code_bits,
            "bits_per_param": cert.bits_per_param,
            "float_train_error": cert.train_loss("float"),
            "quantized_train_error": cert.train_loss("decoded"),
            "test_error": self.test_error,
            "delta": cert.delta,
            "bounds": {method: bound.value for method, bound in headline_bounds(cert).items()},
            "certificate": cert.to_dict(),
        }


@dataclass(frozen=True)
class SweepResult:
    """Certificates of a family of models, sorted by parameter count, and the claim they make.

    `delta_shares` maps each model's name to the δ its row is certified at: δ/M each when
    `simultaneous` (the shares sum to δ), δ each otherwise (separate claims).
    """

    rows: tuple[SweepRow, ...]
    delta: float
    delta_shares: dict[str, float]
    simultaneous: bool

    def __post_init__(self) -> None:
        if not self.rows:
            raise ValueError("a sweep needs at least one model")
        ordered = tuple(sorted(self.rows, key=lambda row: row.certificate.model_params))
        object.__setattr__(self, "rows", ordered)
        names = [row.name for row in ordered]
        if sorted(names) != sorted(self.delta_shares):
            raise ValueError("delta_shares must name exactly the models of the rows")
        shares = {name: self.delta_shares[name] for name in names}
        object.__setattr__(self, "delta_shares", shares)
        sizes = {row.certificate.data.get("n") for row in ordered}
        if len(sizes) != 1:
            raise ValueError(
                f"every row must be certified on the same training data, got n {sizes}"
            )
        # The claim sentence rests on these: each row at its share, shares within δ.
        if any(row.certificate.delta != shares[row.name] for row in ordered):
            raise ValueError("every row's certificate must be made at its δ share")
        if self.simultaneous and math.fsum(shares.values()) > self.delta * (1.0 + 1e-12):
            raise ValueError("simultaneous δ shares must sum to at most δ")
        if not self.simultaneous and set(shares.values()) != {self.delta}:
            raise ValueError("separate claims are each made at the whole δ")

    @property
    def certificates(self) -> list[Certificate]:
        return [row.certificate for row in self.rows]

    @property
    def n(self) -> int:
        """Number of training examples every row is certified on."""
        return self.rows[0].certificate.data["n"]

    @property
    def methods(self) -> list[str]:
        """Every bound method of the rows, in the order they were computed."""
        return list(dict.fromkeys(m for row in self.rows for m in headline_bounds(row.certificate)))

    @property
    def has_test(self) -> bool:
        return any(row.certificate.test is not None for row in self.rows)

    @property
    def claim(self) -> str:
        """The sentence the table supports: simultaneous rows, or separate claims."""
        confidence = f"{1 - self.delta:g}"
        count = len(self.rows)
        if self.simultaneous:
            shares = set(self.delta_shares.values())
            split = (
                f"split evenly: each row is certified at δ/{count} = {shares.pop():.4g}"
                if shares == {self.delta / count}
                else "split over the rows as the δ shares list"
            )
            return (
                f"With probability at least {confidence} over the draw of the {self.n} "
                f"training examples, the bounds of all {count} models hold simultaneously "
                f"(δ = {self.delta:g} {split})."
            )
        return (
            f"Each row is a separate claim: with probability at least {confidence} over the "
            f"draw of the {self.n} training examples, that row's bounds hold (δ = "
            f"{self.delta:g} per row); the {count} rows are not claimed to hold simultaneously."
        )

    def shares_text(self) -> str:
        """The δ ledger in one line."""
        shares = ", ".join(f"{name} {share:.4g}" for name, share in self.delta_shares.items())
        kind = "simultaneous, shares sum to δ" if self.simultaneous else "separate claims"
        return f"δ shares ({kind}): {shares}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "claim": self.claim,
            "simultaneous": self.simultaneous,
            "delta": self.delta,
            "delta_shares": dict(self.delta_shares),
            "n": self.n,
            "methods": self.methods,
            "rows": [row.to_dict() for row in self.rows],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Header and formatted cells shared by the terminal table, Markdown and LaTeX.

        The test-error column is left out when no model was evaluated on test data.
        """
        methods, with_test = self.methods, self.has_test
        header = ["model", "params", "K (bits)", "bits/param", "float train err"]
        header += ["quant. train err"] + ["test err"] * with_test
        header += [f"{m} bound" for m in methods]
        cells = []
        for row in self.rows:
            cert, test = row.certificate, row.test_error
            line = [
                row.name,
                f"{cert.model_params:,}",
                f"{cert.code_bits:,}",
                f"{cert.bits_per_param:.4g}",
                f"{cert.train_loss('float'):.4f}",
                f"{cert.train_loss('decoded'):.4f}",
            ]
            if with_test:
                line.append("—" if test is None else f"{test:.4f}")
            bounds = headline_bounds(cert)
            line += [f"{bounds[m].value:.4f}" if m in bounds else "—" for m in methods]
            cells.append(line)
        return header, cells

    def to_markdown(self) -> str:
        header, cells = self.table()
        lines = [f"**{self.claim}**", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "|".join("---" if i == 0 else "--:" for i in range(len(header))) + "|")
        lines += ["| " + " | ".join(line) + " |" for line in cells]
        lines += ["", self.shares_text()]
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        """A plain ``tabular`` (no booktabs), preceded by the claim as a LaTeX comment."""
        header, cells = self.table()
        lines = [f"% {self.claim}", f"% {self.shares_text()}"]
        lines += [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\hline"]
        lines.append(" & ".join(latex_escape(h) for h in header) + r" \\")
        lines.append(r"\hline")
        lines += [" & ".join(latex_escape(c) for c in line) + r" \\" for line in cells]
        lines += [r"\hline", r"\end{tabular}"]
        return "\n".join(lines) + "\n"


def _named_models(
    models: Sequence[tuple[str, nn.Module]] | Mapping[str, nn.Module],
) -> list[tuple[str, nn.Module]]:
    pairs = list(models.items()) if isinstance(models, Mapping) else list(models)
    if not pairs:
        raise ValueError("a sweep needs at least one model")
    names = [pair[0] for pair in pairs]
    if not all(isinstance(name, str) and name for name in names):
        raise ValueError("every model of a sweep needs a non-empty string name")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"model names must be unique; repeated: {repeated}")
    return pairs


def sweep(
    models: Sequence[tuple[str, nn.Module]] | Mapping[str, nn.Module],
    train_data,
    *,
    test_data=None,
    delta: float = 0.05,
    simultaneous: bool = False,
    model_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    **certify_kwargs: Any,
) -> SweepResult:
    """Certify every model on `train_data` (and `test_data`) and collect the certificates.

    `models` are (name, module) pairs or a name → module mapping. `certify_kwargs` (grid,
    qat_epochs, methods, quiet, ...) go to every `certify` call; `model_kwargs[name]`
    overrides them for one model (e.g. its ``architecture`` or ``prior``). With
    `simultaneous`, δ is split evenly over the models by the ledger and each row is
    certified at δ/M; otherwise each row is certified at δ as a separate claim.
    `progress(i, M, name)` is called before model i (1-based) is certified.
    """
    from bounds.pipeline.certify import certify

    pairs = _named_models(models)
    names = [name for name, _ in pairs]
    overrides = dict(model_kwargs or {})
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"model_kwargs names models not in the sweep: {unknown}")
    for name, extra in overrides.items():
        owned = sorted(set(extra) & set(_SWEEP_OWNED))
        if owned:
            raise ValueError(f"model_kwargs[{name!r}] may not set {owned}; the sweep sets them")
    ledger = Ledger(delta)  # validates δ before any work
    if simultaneous:
        shares = ledger.split({name: 1.0 for name in names})
    else:
        shares = {name: ledger.delta for name in names}

    rows = []
    for index, (name, model) in enumerate(pairs, start=1):
        if progress is not None:
            progress(index, len(pairs), name)
        arguments = {**certify_kwargs, **overrides.get(name, {})}
        certificate = certify(
            model, train_data, test_data=test_data, delta=shares[name], **arguments
        )
        rows.append(SweepRow(name, certificate))
    return SweepResult(
        rows=tuple(rows), delta=ledger.delta, delta_shares=shares, simultaneous=simultaneous
    )
