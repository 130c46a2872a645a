"""`bounds compute MODEL` and `bounds verify CODE`: certify a model, and re-check a claim."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .output import Format, console, render

Arch = Annotated[
    Optional[str],  # noqa: UP045 - Typer reads the annotation at run time
    typer.Option(help="Architecture factory, module:factory[:key=value,...]."),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
TrainData = Annotated[str, typer.Option("--data", help="Training data spec.")]
TestData = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--test-data", help="Held-out data spec; adds the test error and a test-set bound."
    ),
]
Delta = Annotated[float, typer.Option("--delta", help="Confidence budget δ.")]
Levels = Annotated[str, typer.Option("--levels", help="Quantization levels to search.")]
Schemes = Annotated[str, typer.Option("--schemes", help="Quantizers to search.")]
Coder = Annotated[str, typer.Option("--coder", help="Payload coder: auto, range or zstd.")]
QatEpochs = Annotated[
    int, typer.Option("--qat-epochs", help="Quantization-aware fine-tuning epochs.")
]
QatLr = Annotated[float, typer.Option("--qat-lr", help="Learning rate of the fine-tuning.")]
TrustPickle = Annotated[
    bool,
    typer.Option(help="Allow loading pickled Python objects (runs code from the file)."),
]


def check_writable(path: Path | None, what: str) -> None:
    """Fail before any work if an output path cannot be written."""
    if path is None:
        return
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a directory")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ValueError(f"cannot write {what} {str(path)!r}: its folder is missing or read-only")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"cannot write {what} {str(path)!r}: the file is read-only")


def certificate_table(certificate) -> Table:
    table = Table(title=certificate.claim, title_justify="left", show_header=False)
    table.add_column("quantity")
    table.add_column("value", overflow="fold")
    for name, value in certificate.summary_rows():
        table.add_row(name, value)
    return table


def search_grid(levels: str, schemes: str, coder: str) -> list[dict]:
    from quantize import product_grid

    try:
        level_values = tuple(int(value) for value in levels.split(","))
    except ValueError:
        raise ValueError(f"--levels must be comma-separated integers, got {levels!r}") from None
    return product_grid(
        levels=level_values,
        schemes=tuple(s.strip() for s in schemes.split(",")),
        coders=(coder,),
    )


def compute(
    model: Annotated[
        str,
        typer.Argument(
            help="Model file: state dict, .safetensors, subspace "
            "checkpoint, TorchScript, or pickled module."
        ),
    ],
    arch: Arch = None,
    data: TrainData = "mnist1d",
    test_data: TestData = None,
    delta: Delta = 0.05,
    levels: Levels = "4,8,16,32",
    schemes: Schemes = "kmeans,uniform",
    coder: Coder = "auto",
    qat_epochs: QatEpochs = 0,
    qat_lr: QatLr = 1e-4,
    prior: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Prior: init:SEED or a file of reference weights."),
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
    json_path: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--json", help="Also write the certificate as JSON here."),
    ] = None,
    save_code: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Write the code word here (for `bounds verify`)."),
    ] = None,
    trust_pickle: TrustPickle = False,
    device: Annotated[str, typer.Option(help="Torch device for evaluation.")] = "cpu",
    quiet: Quiet = False,
) -> None:
    """Certify MODEL: compress it, evaluate the decoded model on DATA, and bound its error."""
    import bounds
    from bounds.pipeline import certify

    from .specs import load_data, load_model, load_prior

    bounds.Ledger(delta)  # validates δ before any work
    check_writable(json_path, "JSON output")
    check_writable(save_code, "code file")
    loaded = load_model(model, arch, trust_pickle=trust_pickle)
    train = load_data(data, trust_pickle=trust_pickle)
    test = (
        None
        if test_data is None
        else load_data(test_data, default_split="test", trust_pickle=trust_pickle)
    )
    certificate = certify(
        loaded.model,
        train,
        prior=load_prior(prior, loaded.architecture),
        test_data=test,
        delta=delta,
        grid=search_grid(levels, schemes, coder),
        qat_epochs=qat_epochs,
        qat_lr=qat_lr,
        device=device,
        architecture=loaded.architecture,
        quiet=quiet,
    )
    if json_path is not None:
        json_path.write_text(certificate.to_json() + "\n")
    if save_code is not None:
        save_code.write_bytes(certificate.code.to_bytes())
    render(certificate, fmt, certificate_table)


def verify(
    code: Annotated[
        Path, typer.Argument(help="Code word written by `bounds compute --save-code`.")
    ],
    data: TrainData = "mnist1d",
    model: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="The model file given to compute (supplies architecture and prior; "
            "its trained weights are not used)."
        ),
    ] = None,
    arch: Arch = None,
    prior: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Prior spec, as given to compute."),
    ] = None,
    certificate: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Certificate JSON to check against."),
    ] = None,
    delta: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="δ when no certificate is given."),
    ] = None,
    trust_pickle: TrustPickle = False,
    quiet: Quiet = False,
) -> None:
    """Decode CODE, re-evaluate it on DATA, recompute the bounds; exit 1 on any difference."""
    from bounds.pipeline import reproduce

    from .specs import build_architecture, load_data, load_model, load_prior

    if not code.is_file():
        raise ValueError(f"code file {str(code)!r} does not exist or is not a file")
    claimed = None
    if certificate is not None:
        try:
            claimed = json.loads(Path(certificate).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read certificate {str(certificate)!r}: {error}") from None
    if model is not None:
        loaded = load_model(model, arch, trust_pickle=trust_pickle)
        skeleton, architecture = loaded.model, loaded.architecture
    elif arch is not None:
        skeleton, architecture = build_architecture(arch), arch
    else:
        raise ValueError("pass --model (the file given to compute) or --arch to rebuild the model")
    result = reproduce(
        code.read_bytes(),
        skeleton,
        load_data(data, trust_pickle=trust_pickle),
        prior=load_prior(prior, architecture),
        certificate=claimed,
        delta=delta,
        quiet=quiet,
    )
    for line in result.report:
        console.print(line, highlight=False, markup=False)
    if result.mismatches:
        for mismatch in result.mismatches:
            sys.stderr.write(f"mismatch: {mismatch}\n")
        raise typer.Exit(1)
