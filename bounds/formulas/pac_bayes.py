"""PAC-Bayes bounds on the risk of a randomised predictor Q given a prior P fixed before the data.

With probability ≥ 1 − δ over n i.i.d. examples, simultaneously for every posterior Q,
writing KL = KL(Q‖P), R̂ = R̂_Q and R = R_Q (losses in [0, 1]):

- "kl" (Maurer 2004, Thm 5; Seeger 2002): kl(R̂‖R) ≤ (KL + ln(2√n/δ))/n;
- "kl_xi": the same with ξ(n) = Σ_k C(n,k)(k/n)^k(1−k/n)^{n−k} in place of 2√n (Maurer 2004,
  Thm 1 — ξ(n) ≤ 2√n for n ≥ 8 — and Germain et al. 2015);
- "mcallester" (McAllester 1999/2003 with Maurer's constant): R ≤ R̂ + √((KL + ln(2√n/δ))/(2n));
- "quad" (Rivasplata et al. 2019, "PAC-Bayes with backprop"; Pérez-Ortiz et al. 2021 JMLR):
  R ≤ (√(R̂ + C/2) + √(C/2))², C = (KL + ln(2√n/δ))/n;
- "lambda" (Thiemann et al. 2017, Thm 3, holds for all λ ∈ (0, 2) at once, so the best λ is
  free): R ≤ R̂/(1 − λ/2) + (KL + ln(2√n/δ))/(nλ(1 − λ/2));
- "catoni" (Catoni 2007, Thm 1.2.6, union over a β grid G):
  R ≤ (1 − exp(−β R̂ − (KL + ln(|G|/δ))/n)) / (1 − e^{−β}).

When R̂_Q is estimated from N networks drawn from Q, the estimate R̂_MC is first raised to
R̂_Q ≤ kl⁻¹(R̂_MC, ln(1/δ')/N) (Langford & Caruana 2002; Dziugaite & Roy 2017, §4), and the
bound is taken at δ − δ'; the ledger shows both shares.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy.special import betaln, logsumexp, xlogy

from bounds.formulas import _validate
from bounds.formulas.catoni import catoni_minimum, check_beta_grid
from bounds.formulas.errors import InvalidInput
from bounds.formulas.kl import kl_inv
from bounds.formulas.result import Bound

PAC_BAYES_METHODS = ("kl", "kl_xi", "mcallester", "quad", "lambda", "catoni")
_XI_CHUNK = 1 << 20


@lru_cache(maxsize=64)
def log_xi(n: int) -> float:
    """ln ξ(n), ξ(n) = Σ_{k=0}^{n} C(n,k) (k/n)^k (1 − k/n)^{n−k}, summed exactly in log space.

    Computed in chunks of k so memory stays bounded for large n.
    """
    n = _validate.count(n, "n", positive=True)
    parts = []
    for start in range(0, n + 1, _XI_CHUNK):
        k = np.arange(start, min(n, start + _XI_CHUNK - 1) + 1, dtype=np.float64)
        log_choose = -math.log(n + 1.0) - betaln(n - k + 1.0, k + 1.0)
        parts.append(logsumexp(log_choose + xlogy(k, k / n) + xlogy(n - k, 1.0 - k / n)))
    return float(logsumexp(parts))


def pac_bayes_bound(
    risk: float,
    kl_divergence: float,
    n: int,
    delta: float = 0.05,
    *,
    method: str = "kl",
    mc_samples: int | None = None,
    mc_delta: float | None = None,
    loss_range: tuple[float, float] = (0.0, 1.0),
    beta_grid=None,
) -> Bound:
    """PAC-Bayes bound on the risk of the posterior Q.

    Parameters
    ----------
    risk : R̂_Q, the posterior's empirical risk (or its Monte Carlo estimate when
        `mc_samples` is given).
    kl_divergence : KL(Q‖P) in nats, with P fixed before seeing the data.
    n : number of i.i.d. training examples.
    delta : total confidence budget.
    method : one of "kl", "kl_xi", "mcallester", "quad", "lambda", "catoni".
    mc_samples : N, the number of networks drawn from Q to estimate R̂_Q.
    mc_delta : δ' for the Monte Carlo step (default δ/2); the bound itself gets δ − δ'.
    loss_range : (a, b), the range of the loss; the bound is applied to (R̂ − a)/(b − a).
    beta_grid : the β grid for "catoni" (its size is paid as ln |G| nats).
    """
    n = _validate.count(n, "n", positive=True)
    kl_divergence = _validate.nonnegative(kl_divergence, "kl_divergence")
    delta = _validate.delta(delta)
    if method not in PAC_BAYES_METHODS:
        raise InvalidInput(f"unknown PAC-Bayes method {method!r}; choose from {PAC_BAYES_METHODS}")
    low, high, unit = _validate.unit_risk(risk, loss_range)
    width = high - low
    terms: dict[str, float] = {"kl_divergence": kl_divergence}

    if mc_samples is None:
        if mc_delta is not None:
            raise InvalidInput("mc_delta is only meaningful with mc_samples")
        shares = {"pac_bayes": delta}
    else:
        mc_samples = _validate.count(mc_samples, "mc_samples", positive=True)
        mc_delta = delta / 2.0 if mc_delta is None else _validate.delta(mc_delta, "mc_delta")
        if mc_delta >= delta:
            raise InvalidInput(f"mc_delta ({mc_delta:g}) must be smaller than delta ({delta:g})")
        shares = {"pac_bayes": delta - mc_delta, "monte_carlo": mc_delta}
        unit_mc = unit
        unit = float(kl_inv(unit_mc, -math.log(mc_delta) / mc_samples))
        terms["mc_samples"] = float(mc_samples)
        terms["empirical_risk_mc"] = float(risk)
        terms["empirical_risk_upper"] = low + width * unit
    bound_delta = shares["pac_bayes"]

    if method == "kl_xi":
        log_confidence = log_xi(n) - math.log(bound_delta)
    elif method == "catoni":
        grid = check_beta_grid(beta_grid)
        terms["beta_grid_size"] = float(grid.size)
        log_confidence = math.log(grid.size) - math.log(bound_delta)
    else:
        log_confidence = math.log(2.0 * math.sqrt(n)) - math.log(bound_delta)
    terms["log_confidence"] = log_confidence
    c = (kl_divergence + log_confidence) / n
    terms["complexity_per_example"] = c

    if method in ("kl", "kl_xi"):
        unit_bound = float(kl_inv(unit, c))
    elif method == "mcallester":
        unit_bound = unit + math.sqrt(c / 2.0)
    elif method == "quad":
        unit_bound = (math.sqrt(unit + c / 2.0) + math.sqrt(c / 2.0)) ** 2
    elif method == "lambda":
        # Thiemann et al. (2017), the minimising λ; the bound holds for all λ at once.
        lam = 2.0 / (math.sqrt(2.0 * unit / c + 1.0) + 1.0)
        terms["lambda"] = lam
        unit_bound = unit / (1.0 - lam / 2.0) + c / (lam * (1.0 - lam / 2.0))
    else:
        unit_bound, terms["beta"] = catoni_minimum(unit, kl_divergence + log_confidence, n, grid)

    return Bound(
        value=low + width * unit_bound,
        method=method,
        empirical_risk=float(risk),
        n=n,
        delta=delta,
        complexity_nats=kl_divergence,
        terms=terms,
        delta_shares=shares,
        loss_range=(low, high),
    )
