"""`bounds formula ...`: the bound formulas as a calculator for paper numbers."""

from __future__ import annotations

from typing import Annotated

import typer

import bounds

from .output import bounds_table, console, print_json

app = typer.Typer(
    help="Evaluate a bound formula from its inputs (no model needed).",
    no_args_is_help=True,
)

Delta = Annotated[float, typer.Option(help="Confidence budget δ: the bound holds w.p. ≥ 1 − δ.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.", metavar="")]


def _report(title: str, results: list[bounds.Bound], as_json: bool) -> None:
    if as_json:
        print_json({"bounds": [result.to_dict() for result in results]})
    else:
        console.print(bounds_table(title, results))


@app.command()
def occam(
    n: Annotated[int, typer.Option(help="Number of training examples.")],
    bits: Annotated[float, typer.Option(help="Code length K of the hypothesis, in bits.")],
    errors: Annotated[int | None, typer.Option(help="Training errors (0-1 loss).")] = None,
    risk: Annotated[
        float | None,
        typer.Option(help="Mean training loss in the loss range, instead of --errors."),
    ] = None,
    delta: Delta = 0.05,
    loss_min: Annotated[float, typer.Option(help="Lower end a of the loss range.")] = 0.0,
    loss_max: Annotated[float, typer.Option(help="Upper end b of the loss range.")] = 1.0,
    prefix_free: Annotated[
        bool,
        typer.Option(
            "--prefix-free/--no-prefix-free",
            help="The code is self-delimiting; otherwise its Elias-δ length is added.",
            metavar="",
        ),
    ] = True,
    as_json: Json = False,
) -> None:
    """Occam bounds for a hypothesis coded in K bits, every method side by side."""
    methods = bounds.OCCAM_METHODS if errors is not None else bounds.OCCAM_METHODS[1:]
    results = [
        bounds.occam_bound(
            n,
            bits,
            delta,
            errors=errors,
            risk=risk,
            method=method,
            loss_range=(loss_min, loss_max),
            prefix_free=prefix_free,
        )
        for method in methods
    ]
    _report(f"Occam bounds (n={n}, K={bits:g} bits, δ={delta:g})", results, as_json)


@app.command("pac-bayes")
def pac_bayes(
    n: Annotated[int, typer.Option(help="Number of training examples.")],
    risk: Annotated[float, typer.Option(help="Empirical risk of the posterior Q.")],
    kl: Annotated[float, typer.Option(help="KL(Q‖P) in nats.")],
    delta: Delta = 0.05,
    mc_samples: Annotated[
        int | None,
        typer.Option(help="Networks sampled from Q to estimate the risk (adds a kl step)."),
    ] = None,
    mc_delta: Annotated[
        float | None, typer.Option(help="δ share of the Monte Carlo step (default δ/2).")
    ] = None,
    as_json: Json = False,
) -> None:
    """PAC-Bayes bounds for a posterior with empirical risk R̂ and KL(Q‖P), every method."""
    results = [
        bounds.pac_bayes_bound(
            risk, kl, n, delta, method=method, mc_samples=mc_samples, mc_delta=mc_delta
        )
        for method in bounds.PAC_BAYES_METHODS
    ]
    _report(f"PAC-Bayes bounds (n={n}, KL={kl:g} nats, δ={delta:g})", results, as_json)


@app.command("test-set")
def test_set(
    m: Annotated[int, typer.Option(help="Number of held-out examples.")],
    errors: Annotated[int, typer.Option(help="Errors on the held-out examples.")],
    delta: Delta = 0.05,
    as_json: Json = False,
) -> None:
    """Exact binomial test-set bound from k errors on m held-out examples."""
    result = bounds.test_set_bound(m, errors, delta)
    _report(f"Test-set bound (m={m}, δ={delta:g})", [result], as_json)
