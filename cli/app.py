"""The Typer application behind the `bounds` command."""

from __future__ import annotations

import typer

from . import formula
from .output import err_console

app = typer.Typer(
    name="bounds",
    help="Certify how well a trained network generalizes from its compressed size.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(formula.app, name="formula")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; bad input ends with one line on standard error and exit code 2."""
    try:
        app(args=argv, prog_name="bounds")
    except ValueError as error:  # InvalidInput, CodeError and other bad-input errors
        err_console.print(f"error: {error}", highlight=False, markup=False)
        raise SystemExit(2) from None
    except OSError as error:
        err_console.print(f"error: {error}", highlight=False, markup=False)
        raise SystemExit(2) from None
