"""`bounds demo`: the main job on built-in data (MNIST-1D, generated offline)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from .options import Quiet
from .output import console
from .sweep import sweep_table


def demo(
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for checkpoints, code words, certificates, tables, plots "
            "(default: bounds-demo; bounds-demo-parameters with --parameters)."
        ),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="A smaller run (fewer examples, narrower models).", metavar=""
        ),
    ] = False,
    parameters: Annotated[
        bool,
        typer.Option(
            "--parameters",
            help="The parameter-code comparison instead: CNNs of growing width trained in one "
            "random subspace, each certified by the code of its subspace coordinates.",
            metavar="",
        ),
    ] = False,
    dim: Annotated[int | None, typer.Option(help="--parameters: the subspace dimension d.")] = None,
    epochs: Annotated[int | None, typer.Option(help="--parameters: epochs per model.")] = None,
    quiet: Quiet = False,
) -> None:
    """Certify MNIST-1D students of growing width by requential codes (one teacher's coded
    labels; the decoder re-trains each student), print the table and plot the bounds."""
    from bounds.demo import run_demo, run_parameter_demo, settings_for

    if out is None:
        out = Path("bounds-demo-parameters" if parameters else "bounds-demo")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a folder")
    if not parameters and (dim is not None or epochs is not None):
        raise ValueError("--dim and --epochs set the subspace models of --parameters")
    settings = settings_for(quick, parameters, dim=dim, epochs=epochs)
    start = time.perf_counter()
    if parameters:
        result = run_parameter_demo(out, settings, quiet=quiet)
        files = "width-*.pt, width-*.code"
    else:
        result = run_demo(out, settings, quiet=quiet)
        files = "teacher.pt, student-*.code, student-*.pt, student-*.json"
    console.print(sweep_table(result))
    if not parameters:
        console.print(requential_summary(result), highlight=False)
    console.print(
        f"wrote {out}/: bounds.png, bounds.pdf, sweep.json, sweep.md, sweep.tex, settings.json, "
        f"{files} ({time.perf_counter() - start:.0f} s)",
        highlight=False,
    )


def requential_summary(result) -> str:
    """What the sweep table does not say of requential rows: the certified model is the
    decoded student; its 'float' error is the teacher's; N labels and bits per label."""
    lines = [
        "Each row certifies the student that the decoder re-trains from the word; the 'float "
        "train err' column is the teacher's. Labels coded (N), bits per label, and how many "
        "labels were the student's own draw:"
    ]
    for row in result.rows:
        config = row.certificate.code.config
        lines.append(
            f"  {row.name}: N = {config['labels']:,} labels, {config['bits_per_label']:.3f} "
            f"bits/label, own draw {config['agreement_rate']:.3f}"
        )
    return "\n".join(lines)
