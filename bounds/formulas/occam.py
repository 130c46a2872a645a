"""Occam bounds for countable hypothesis classes with a prefix-free code as the prior.

Prior P(h) = 2^{−K(h)} for a prefix-free code of h with K(h) bits (Kraft: Σ 2^{−K} ≤ 1).
With probability ≥ 1 − δ over n i.i.d. examples, simultaneously for every h
(Langford 2005, "Tutorial on practical prediction theory for classification", JMLR 6,
Thm 4.1 — the Occam's razor bound):

- "binomial": R(h) ≤ Bin⁻¹(n, k_h, ln δ − K ln 2), k_h errors of the 0-1 loss;
- "kl":       R(h) ≤ kl⁻¹(R̂, (K ln 2 + ln(1/δ))/n) (Chernoff relaxation; holds for any
              loss in [0, 1], Hoeffding 1963 Thm 1);
- "hoeffding": R(h) ≤ R̂ + (b − a)·√((K ln 2 + ln(1/δ))/(2n));
- "catoni":   R(h) ≤ (1 − exp(−β R̂ − (K ln 2 + ln(|G|/δ))/n)) / (1 − e^{−β}) for the best β
              of a grid G fixed in advance (Catoni 2007, Thm 1.2.6).

When the reported bound was selected among `choices` equally weighted alternatives fixed
before the data (for example a grid of loss-smoothing values α), each alternative gets
δ/choices: ln(choices) nats join the complexity in every method (a union bound).

The product δ·2^{−K} is never formed: every formula works with ln δ − K ln 2.
For a loss in [a, b], the kl and Catoni forms are applied to (R̂ − a)/(b − a) and mapped back.
"""

from __future__ import annotations

import math

from bounds.formulas import _validate
from bounds.formulas.binomial import binom_tail_inv
from bounds.formulas.catoni import catoni_minimum, check_beta_grid
from bounds.formulas.errors import InvalidInput
from bounds.formulas.kl import kl_inv
from bounds.formulas.result import Bound

OCCAM_METHODS = ("binomial", "kl", "hoeffding", "catoni")
_LN2 = math.log(2.0)


def elias_delta_bits(value: int) -> int:
    """Length of the Elias-δ code of an integer ≥ 1: ⌊log₂ N⌋ + 2⌊log₂(⌊log₂ N⌋ + 1)⌋ + 1."""
    if value < 1:
        raise InvalidInput(f"Elias-δ codes integers ≥ 1, got {value}")
    length = value.bit_length() - 1
    return length + 2 * ((length + 1).bit_length() - 1) + 1


def occam_bound(
    n: int,
    code_bits: float,
    delta: float = 0.05,
    *,
    errors: int | None = None,
    risk: float | None = None,
    method: str = "binomial",
    loss_range: tuple[float, float] = (0.0, 1.0),
    prefix_free: bool = True,
    beta_grid=None,
    choices: int = 1,
) -> Bound:
    """Occam (countable-hypothesis) bound on the true risk of a hypothesis coded in K bits.

    Parameters
    ----------
    n : number of i.i.d. training examples.
    code_bits : K, the length in bits of the hypothesis's code word.
    delta : confidence budget; the bound holds with probability ≥ 1 − δ.
    errors : number of training errors (0-1 loss); give this or `risk`.
    risk : mean of a loss bounded in `loss_range`; "binomial" then does not apply.
    method : one of "binomial", "kl", "hoeffding", "catoni".
    loss_range : (a, b), the range of the loss; errors need (0, 1).
    prefix_free : False when the code is not self-delimiting: its length is then sent
        first in Elias-δ (`length_prefix_bits` in `terms`), which makes it prefix-free.
    beta_grid : the β grid for "catoni" (default `DEFAULT_BETA_GRID`); its size is paid
        as ln |G| nats.
    choices : the number of equally weighted alternatives this bound was selected from
        (e.g. the size of a declared α grid); costs ln(choices) nats.
    """
    n = _validate.count(n, "n", positive=True)
    code_bits = _validate.nonnegative(code_bits, "code_bits")
    delta = _validate.delta(delta)
    choices = _validate.count(choices, "choices", positive=True)
    if method not in OCCAM_METHODS:
        raise InvalidInput(f"unknown Occam method {method!r}; choose from {OCCAM_METHODS}")
    if (errors is None) == (risk is None):
        raise InvalidInput("give exactly one of errors (a count) or risk (a mean loss)")
    if errors is not None:
        errors = _validate.count(errors, "errors")
        if errors > n:
            raise InvalidInput(f"errors must be at most n, got {errors} > {n}")
        if tuple(loss_range) != (0.0, 1.0):
            raise InvalidInput("errors count a 0-1 loss; loss_range must be (0, 1)")
        risk = errors / n
    elif method == "binomial":
        raise InvalidInput("the binomial method needs an error count (errors=), not a mean loss")
    low, high, unit = _validate.unit_risk(risk, loss_range)
    width = high - low

    terms: dict[str, float] = {"code_bits": code_bits}
    total_bits = code_bits
    if not prefix_free:
        prefix = elias_delta_bits(math.ceil(code_bits) + 1)
        terms["length_prefix_bits"] = float(prefix)
        total_bits += prefix
    complexity_nats = total_bits * _LN2
    choice_nats = math.log(choices)
    terms["choices"] = float(choices)
    terms["choice_nats"] = choice_nats
    log_inv_delta = -math.log(delta)
    terms["log_inv_delta"] = log_inv_delta

    if method == "binomial":
        log_delta_h = math.log(delta) - complexity_nats - choice_nats
        terms["log_delta_h"] = log_delta_h
        value = binom_tail_inv(n, errors, log_delta_h)
    elif method == "kl":
        c = (complexity_nats + choice_nats + log_inv_delta) / n
        terms["complexity_per_example"] = c
        value = low + width * float(kl_inv(unit, c))
    elif method == "hoeffding":
        c = (complexity_nats + choice_nats + log_inv_delta) / n
        terms["complexity_per_example"] = c
        terms["deviation"] = width * math.sqrt(c / 2.0)
        value = risk + terms["deviation"]
    else:
        grid = check_beta_grid(beta_grid)
        grid_nats = math.log(grid.size)
        terms["beta_grid_size"] = float(grid.size)
        terms["grid_nats"] = grid_nats
        unit_bound, beta = catoni_minimum(
            unit, complexity_nats + grid_nats + choice_nats + log_inv_delta, n, grid
        )
        terms["beta"] = beta
        value = low + width * unit_bound

    return Bound(
        value=float(value),
        method=method,
        empirical_risk=float(risk),
        n=n,
        delta=delta,
        complexity_nats=complexity_nats,
        terms=terms,
        delta_shares={"occam": delta},
        loss_range=(low, high),
    )
