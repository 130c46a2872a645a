"""The options the commands share (Typer annotations) and the checks that run on them before
any heavy import."""

from __future__ import annotations

import os
from collections.abc import Iterable
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

Arch = Annotated[
    str | None,
    typer.Option(help="Architecture factory, module:factory[:key=value,...]."),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.", metavar="")]
TrainData = Annotated[str, typer.Option("--data", help="Training data spec.")]
TestData = Annotated[
    str | None,
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


class SearchRule(str, Enum):
    screened = "screened"
    exhaustive = "exhaustive"


Search = Annotated[
    SearchRule | None,
    typer.Option(
        "--search",
        help="How the grid is searched: screened (rank every configuration on a seeded "
        "subsample, 2 048 training examples or lm: 1/8 of the documents, and evaluate at most "
        "2 in full; the default) or exhaustive (evaluate every configuration that can still "
        "win). Either is paid for by the grid index.",
    ),
]
TrustPickle = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="Allow loading pickled Python objects (runs code from the file).",
        metavar="",
    ),
]


def check_device(device: str) -> None:
    """Fail before any work on a device this torch cannot use."""
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown --device {device!r}: use cpu, or cuda on a CUDA build") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: this torch build or machine has no CUDA device")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r}: evaluation runs on cpu or cuda")


DATA_FILE_SUFFIXES = (".npz", ".pt", ".pth", ".npy", ".bin")


def check_inputs(
    *,
    delta: float | None = None,
    models: Iterable[str | Path] = (),
    data: Iterable[str | None] = (),
    data_kind: str = "data file",
    outputs: Iterable[tuple[Path | None, str]] = (),
    device: str | None = None,
) -> None:
    """Fail on bad options before any heavy import: δ, model files and data files that must
    exist, outputs that must be writable; the device last, since checking it imports torch."""
    if delta is not None:
        import bounds  # torch-free

        bounds.Ledger(delta)
    for path in models:
        if not Path(path).exists():
            raise ValueError(f"model file {str(path)!r} does not exist")
    for spec in data:
        if spec is not None and spec.endswith(DATA_FILE_SUFFIXES) and not Path(spec).is_file():
            raise ValueError(f"{data_kind} {spec!r} does not exist or is not a file")
    for path, what in outputs:
        check_writable(path, what)
    if device is not None:
        check_device(device)


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


class Task(str, Enum):
    classify = "classify"
    lm = "lm"


class CodeKind(str, Enum):
    parameters = "parameters"
    requential = "requential"
    prequential = "prequential"


CodeOption = Annotated[
    CodeKind,
    typer.Option(
        "--code",
        help="parameters: code MODEL's weights; requential or prequential: MODEL is a teacher "
        "and the certified model is a student the decoder re-trains from the teacher's coded "
        "labels on an input pool (lm: on sequences the student generates).",
    ),
]
PoolOption = Annotated[
    str | None,
    typer.Option(
        help="requential: a data spec whose inputs (labels unused) are the pool, fixed before "
        "the training data (default for mnist1d data: mnist1d with the next seed)."
    ),
]
LabelsOption = Annotated[
    str | None,
    typer.Option(
        help="requential: the declared grid of label counts (default 1000,2000,4000); lm: of "
        "generated sequence counts (default 128,256,512)."
    ),
]
SequenceLength = Annotated[
    int | None,
    typer.Option(
        help="lm requential: tokens generated per sequence after the start token (default: "
        "--context)."
    ),
]
StartToken = Annotated[
    int | None,
    typer.Option(
        help="lm requential: the token every generated sequence starts from (default: --eod, "
        "or the stdlib corpus's end-of-document id 256)."
    ),
]
StudentSeed = Annotated[int, typer.Option(help="requential: the student's init seed.")]
SharedSeed = Annotated[int, typer.Option(help="requential: the shared-randomness seed.")]


Distributed = Annotated[
    bool,
    typer.Option(
        "--distributed",
        help="Shard evaluation over the processes of a torchrun launch (gloo on CPU, nccl "
        "on CUDA); rank 0 prints and writes.",
        metavar="",
    ),
]
DEFAULT_DATA = {Task.classify: "mnist1d", Task.lm: "stdlib"}
TaskChoice = Annotated[
    Task,
    typer.Option(
        help="classify: labelled examples; lm: a causal language model (as given to "
        "compute, for verify)."
    ),
]
DataSpec = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="Training data spec. classify: mnist1d[:n=N,m=M,seed=S] (built in, the default), "
        "FILE.npz with arrays x and y, FILE.pt holding {'x': tensor, 'y': tensor}, or "
        "module:function returning a Dataset or DataLoader. lm: stdlib[:seed=S] (the Python "
        "standard library's source as bytes, the default) or a FILE.npy / FILE.bin token stream.",
        metavar="SPEC",
    ),
]


Eod = Annotated[int | None, typer.Option(help="lm: end-of-document token id (cuts documents).")]
Offsets = Annotated[Path | None, typer.Option(help="lm: .npy of document start offsets.")]
TokenDtype = Annotated[str | None, typer.Option(help="lm: .bin token id type, uint16 or uint32.")]
Loader = Annotated[
    str | None,
    typer.Option(help="module:function(path) → nn.Module, the decoder of an opaque code word."),
]
Device = Annotated[str, typer.Option(help="Torch device for evaluation.")]


def search_grid(levels: str, schemes: str, coder: str) -> list[dict]:
    """The product grid of the --levels, --schemes and --coder options."""
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


def requential_options(
    code: CodeKind, pool: str | None, labels: str | None, student_seed: int, shared_seed: int
):
    """The `--code requential|prequential` options as one object (cli.specs.Requential)."""
    from .specs import Requential

    grid = None if labels is None else parse_ints(labels, "--labels")
    return Requential(code.value, pool, grid, student_seed, shared_seed)


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(value) for value in text.split(","))
    except ValueError:
        raise ValueError(f"{option} must be comma-separated integers, got {text!r}") from None


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(value) for value in text.split(","))
    except ValueError:
        raise ValueError(f"{option} must be comma-separated numbers, got {text!r}") from None


def specs_given(task, model, arch, data, prior, loader, eod, offsets, token_dtype) -> dict:
    """The specs of a compute or verify command line, by name (None: not given); a
    certificate records those of compute, and verify takes the ones it is not given."""
    return {
        "task": None if task is None else task.value,
        "model": model,
        "arch": arch,
        "data": data,
        "prior": prior,
        "loader": loader,
        "eod": eod,
        "offsets": None if offsets is None else str(offsets),
        "token_dtype": token_dtype,
    }
