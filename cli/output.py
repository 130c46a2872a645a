"""Rendering results for people (rich tables) and programs (JSON)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from enum import Enum

from rich.console import Console
from rich.table import Table

from bounds import Bound

console = Console()
err_console = Console(stderr=True)


class Format(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"
    latex = "latex"


def render(result, fmt: Format, table: Callable[[object], Table]) -> None:
    """Print a certificate or sweep result as JSON, Markdown, LaTeX or a rich table."""
    if fmt is Format.json:
        sys.stdout.write(result.to_json() + "\n")
    elif fmt is Format.markdown:
        sys.stdout.write(result.to_markdown())
    elif fmt is Format.latex:
        sys.stdout.write(result.to_latex())
    else:
        console.print(table(result))


def print_json(data) -> None:
    """Write `data` as indented JSON on standard output."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def bounds_table(title: str, results: Sequence[Bound]) -> Table:
    """One row per bound: method, value, empirical risk, complexity and δ shares."""
    table = Table(title=title)
    table.add_column("method")
    table.add_column("bound", justify="right")
    table.add_column("empirical risk", justify="right")
    table.add_column("complexity (nats)", justify="right")
    table.add_column("n", justify="right")
    table.add_column("δ shares")
    for result in results:
        shares = ", ".join(f"{name} {share:g}" for name, share in result.delta_shares.items())
        table.add_row(
            result.method,
            f"{result.value:.6f}" + (" (vacuous)" if result.vacuous else ""),
            f"{result.empirical_risk:.6f}",
            f"{result.complexity_nats:.2f}",
            str(result.n),
            shares,
        )
    return table
