"""The Typer application behind the `bounds` command."""

from __future__ import annotations

import sys

import typer

from . import compute, demo, formula, sweep, verify

app = typer.Typer(
    name="bounds",
    help="Certify how well a trained network generalizes from its compressed size.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(formula.app, name="formula")
app.command()(compute.compute)
app.command()(verify.verify)
app.command()(sweep.sweep)
app.command()(demo.demo)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; bad input ends with one line on standard error and exit code 2."""
    try:
        app(args=argv, prog_name="bounds")
    except (ValueError, OSError) as error:  # InvalidInput, CodeError, unreadable files
        # One unwrapped line, whatever the terminal width.
        message = " ".join(str(error).split())
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(2) from None
