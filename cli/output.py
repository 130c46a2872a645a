"""Rendering results for people (rich tables) and programs (JSON)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

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


@dataclass(frozen=True)
class FittedTables:
    """`cells` as rich tables that keep every value whole within the width they are printed at.

    A value column is as wide as its longest cell or header word, so its header folds between
    words and no number is ever split; when the columns do not fit side by side they go to
    further tables stacked below, each repeating the first (label) column, which folds.
    """

    header: Sequence[str]
    cells: Sequence[Sequence[str]]
    title: str | None = None
    caption: str | None = None

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        unbounded = options.update(max_width=10_000)  # the width the columns want, uncapped
        groups, columns = [], [0]
        for index in range(1, len(self.header)):
            wider = self._table([*columns, index], width)
            if len(columns) > 1 and console.measure(wider, options=unbounded).maximum > width:
                groups.append(columns)
                columns = [0]
            columns.append(index)
        groups.append(columns)
        tables = [self._table(columns, width) for columns in groups]
        tables[0].title = self.title
        yield from tables
        if self.caption:  # under the stack, at the full width
            yield Text(self.caption)

    def _table(self, columns: list[int], width: int) -> Table:
        widths = [
            max([len(line[index]) for line in self.cells] + [len(word) for word in name.split()])
            for index, name in enumerate(self.header)
        ]
        widths[0] = min(widths[0], max(12, width // 4))
        table = Table(
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
            title_justify="left",
        )
        for index in columns:
            table.add_column(
                self.header[index],
                justify="left" if index == 0 else "right",
                overflow="fold",
                min_width=widths[index],
                max_width=widths[index],
            )
        for line in self.cells:
            table.add_row(*(line[index] for index in columns))
        return table


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
