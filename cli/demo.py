"""`bounds demo`: the main job on built-in data (MNIST-1D, generated offline)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .output import console
from .sweep import sweep_table


def demo(
    out: Annotated[
        Path, typer.Option(help="Folder for checkpoints, code words, tables, plots.")
    ] = (Path("bounds-demo")),
    quick: Annotated[
        bool, typer.Option(help="A smaller run (fewer examples, narrower models) for tests.")
    ] = False,
    dim: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Subspace dimension shared by every width."),
    ] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs per model.")] = None,  # noqa: UP045
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Train MNIST-1D CNNs of growing width in one subspace, certify each, plot the bounds."""
    from bounds.demo import run_demo, settings_for

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a folder")
    settings = settings_for(quick, dim=dim, epochs=epochs)
    start = time.perf_counter()
    result = run_demo(out, settings, quiet=quiet)
    console.print(sweep_table(result))
    console.print(
        f"wrote {out}/: bounds.png, bounds.pdf, sweep.json, sweep.md, sweep.tex, "
        f"width-*.pt, width-*.code ({time.perf_counter() - start:.0f} s)",
        highlight=False,
    )
