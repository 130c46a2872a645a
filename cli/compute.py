"""`bounds compute MODEL` and `bounds verify CODE`: certify a model, and re-check a claim."""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Group
from rich.table import Table

from .output import Format, console, err_console, render

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


def certificate_table(certificate) -> Table | Group:
    table = Table(title=certificate.claim, title_justify="left", show_header=False)
    table.add_column("quantity")
    table.add_column("value", overflow="fold")
    for name, value in certificate.summary_rows():
        table.add_row(name, value)
    if not hasattr(certificate, "bound_rows"):
        return table
    header, *rows = certificate.bound_rows()
    bounds = Table(title="bounds (each a claim at δ)", title_justify="left")
    for index, name in enumerate(header):
        bounds.add_column(name, justify="left" if index == 0 else "right")
    for row in rows:
        bounds.add_row(*row)
    return Group(table, bounds)


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
        "labels on an input pool.",
    ),
]
PoolOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help="requential: a data spec whose inputs (labels unused) are the pool, fixed before "
        "the training data (default for mnist1d data: mnist1d with the next seed)."
    ),
]
LabelsOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="requential: the declared grid of label counts (default 1000,2000,4000)."),
]
StudentSeed = Annotated[int, typer.Option(help="requential: the student's init seed.")]
SharedSeed = Annotated[int, typer.Option(help="requential: the shared-randomness seed.")]


Distributed = Annotated[
    bool,
    typer.Option(
        "--distributed",
        help="Shard evaluation over the processes of a torchrun launch (gloo on CPU, nccl "
        "on CUDA); rank 0 prints and writes.",
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
    Optional[str],  # noqa: UP045
    typer.Option(
        "--data", help="Training data spec (default: mnist1d for classify, stdlib for lm)."
    ),
]


def compute(
    model: Annotated[
        str,
        typer.Argument(
            help="Model file: state dict, .safetensors, subspace "
            "checkpoint, TorchScript, or pickled module."
        ),
    ],
    arch: Arch = None,
    task: TaskChoice = Task.classify,
    data: DataSpec = None,
    test_data: TestData = None,
    delta: Delta = 0.05,
    levels: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Quantization levels to search (default 4,8,16,32; lm 8,16,32)."),
    ] = None,
    schemes: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Quantizers to search (default kmeans,uniform; lm kmeans)."),
    ] = None,
    coder: Coder = "auto",
    qat_epochs: QatEpochs = 0,
    qat_lr: QatLr = 1e-4,
    prior: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Prior: init:SEED; a file of reference weights (codes θ − θ0); or "
            "base:FILE, a frozen base checkpoint (codes only the tensors not in it, e.g. "
            "LoRA factors)."
        ),
    ] = None,
    code_file: Annotated[
        bool,
        typer.Option(
            "--code-file",
            help="MODEL is a pre-quantized file taken as the code word as it is: K = its "
            "zstd size in a self-delimiting frame; the loader is the decoder (in the prior).",
        ),
    ] = False,
    loader: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="module:function(path) → nn.Module that loads MODEL (--code-file)."),
    ] = None,
    context: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="lm: tokens of context per window (default 256)."),
    ] = None,
    stride: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="lm: window stride (default: the context)."),
    ] = None,
    eod: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="lm: end-of-document token id that cuts the stream into documents."),
    ] = None,
    offsets: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="lm: .npy of document start offsets."),
    ] = None,
    test_offsets: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="lm: .npy of document start offsets of the --test-data stream."),
    ] = None,
    token_dtype: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="lm: id type of a .bin stream, uint16 (default) or uint32."),
    ] = None,
    alphas: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="lm: smoothing grid α (comma-separated; default 2^-1..2^-10)."),
    ] = None,
    top_k: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="lm: top-k errors to bound (comma-separated; default 1)."),
    ] = None,
    subsample: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="lm: evaluate s documents drawn at random (half of δ pays for it)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="lm: seed of the subsample.")] = 0,
    batch_size: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Evaluation batch size (default 1024 examples; lm 8 windows)."),
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
    distributed: Distributed = False,
    code: CodeOption = CodeKind.parameters,
    student_arch: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="requential: the student's architecture, module:factory[:k=v,...]."),
    ] = None,
    pool: PoolOption = None,
    labels: LabelsOption = None,
    student_seed: StudentSeed = 0,
    shared_seed: SharedSeed = 0,
    quiet: Quiet = False,
) -> None:
    """Certify MODEL: compress it, evaluate the decoded model on DATA, and bound its error."""
    import bounds
    from bounds.pipeline import distributed as dist

    from .specs import describe_loader, load_corpus, load_data, load_model, load_prior

    bounds.Ledger(delta)  # validates δ before any work
    check_device(device)
    invocation = specs_given(task, model, arch, data, prior, loader, eod, offsets, token_dtype)
    check_writable(json_path, "JSON output")
    check_writable(save_code, "code file")
    if code_file and prior is not None:
        raise ValueError("--code-file takes MODEL as the whole code word; it has no --prior")
    if loader is not None and not code_file:
        raise ValueError("--loader is the decoder of an opaque code word; pass --code-file")
    if task is Task.lm and qat_epochs:
        raise ValueError("--qat-epochs is for classifiers; it is not available with --task lm")
    lm_options = {
        "--context": context,
        "--stride": stride,
        "--eod": eod,
        "--offsets": offsets,
        "--test-offsets": test_offsets,
        "--token-dtype": token_dtype,
        "--alphas": alphas,
        "--top-k": top_k,
        "--subsample": subsample,
    }
    given = [name for name, value in lm_options.items() if value is not None]
    if task is Task.classify and given:
        raise ValueError(f"{', '.join(given)} apply to --task lm only")
    if test_offsets is not None and test_data is None:
        raise ValueError("--test-offsets cuts the --test-data stream; give --test-data too")
    held_out_stream = test_data is not None and test_data.endswith((".npy", ".bin"))
    if offsets is not None and held_out_stream and test_offsets is None:
        # The training stream's offsets say nothing about where the held-out documents start;
        # reusing them would cut the held-out stream at the wrong places.
        raise ValueError(
            "--offsets cut the training stream only; give --test-offsets for the documents "
            "of the --test-data stream"
        )
    student_options = {
        "--student-arch": student_arch,
        "--pool": pool,
        "--labels": labels,
    }
    if code is CodeKind.parameters:
        named = [name for name, value in student_options.items() if value is not None]
        if named:
            raise ValueError(f"{', '.join(named)} apply to --code requential or prequential")
    else:
        clashing = {
            "--code-file": code_file,
            "--prior": prior,
            "--levels": levels,
            "--schemes": schemes,
            "--qat-epochs": qat_epochs,
            "--task lm": task is Task.lm,
        }
        named = [name for name, value in clashing.items() if value]
        if named:
            raise ValueError(f"{', '.join(named)} cannot be used with --code {code.value}")
        if student_arch is None:
            raise ValueError(f"--code {code.value} needs --student-arch (the certified model)")
    main_rank = True
    if distributed:
        dist.initialize(device)
        main_rank = dist.is_main()
    quiet = quiet or not main_rank
    data = DEFAULT_DATA[task] if data is None else data
    invocation["data"] = data
    if code is not CodeKind.parameters:
        from bounds.pipeline.certify import certify

        teacher = load_model(model, arch, trust_pickle=trust_pickle).model
        family = requential_options(code, pool, labels, student_seed, shared_seed).family(
            teacher, student_arch, data
        )
        certificate = certify(
            teacher,
            load_data(data, trust_pickle=trust_pickle),
            code=family,
            test_data=None
            if test_data is None
            else load_data(test_data, default_split="test", trust_pickle=trust_pickle),
            delta=delta,
            device=device,
            quiet=quiet,
        )
        if main_rank:
            _write(certificate, json_path, save_code, fmt, invocation)
        return

    opaque = None
    if code_file:
        from quantize.opaque import OpaqueCode

        loaded = load_model(model, arch, trust_pickle=trust_pickle, loader=loader, opaque=True)
        opaque = OpaqueCode.from_file(model)
        prior_object = describe_loader(loader, arch)
    else:
        loaded = load_model(model, arch, trust_pickle=trust_pickle)
        network, prior_object = load_prior(prior, loaded.architecture, loaded.model)
        loaded.model = network

    grid = None
    if levels is not None or schemes is not None or coder != "auto":
        grid = search_grid(
            levels or ("4,8,16,32" if task is Task.classify else "8,16,32"),
            schemes or ("kmeans,uniform" if task is Task.classify else "kmeans"),
            coder,
        )
    common = dict(
        prior=prior_object,
        delta=delta,
        grid=grid,
        device=device,
        architecture=loaded.architecture,
        opaque=opaque,
        quiet=quiet,
    )
    from bounds.pipeline.certify import certify, certify_lm

    if task is Task.lm:

        def corpus(spec: str, split: str, cuts: Path | None):
            return load_corpus(spec, eod=eod, offsets=cuts, dtype=token_dtype, default_split=split)

        certificate = certify_lm(
            loaded.model,
            corpus(data, "train", offsets),
            test_corpus=None if test_data is None else corpus(test_data, "test", test_offsets),
            context=256 if context is None else context,
            stride=stride,
            alphas=parse_floats(alphas, "--alphas") if alphas else bounds.DEFAULT_ALPHA_GRID,
            top_k=parse_ints("1" if top_k is None else top_k, "--top-k"),
            subsample=subsample,
            seed=seed,
            batch_size=batch_size or 8,
            **common,
        )
    else:
        certificate = certify(
            loaded.model,
            load_data(data, trust_pickle=trust_pickle),
            test_data=None
            if test_data is None
            else load_data(test_data, default_split="test", trust_pickle=trust_pickle),
            qat_epochs=qat_epochs,
            qat_lr=qat_lr,
            batch_size=batch_size or 1024,
            **common,
        )
    if main_rank:
        _write(certificate, json_path, save_code, fmt, invocation)


def _write(
    certificate, json_path: Path | None, save_code: Path | None, fmt: Format, invocation: dict
) -> None:
    """The certificate (recording the command line's specs, for `bounds verify`) as JSON, the
    code word (and a re-trained student's checkpoint next to it), and the report."""
    import dataclasses

    given = {key: value for key, value in invocation.items() if value is not None}
    certificate = dataclasses.replace(certificate, invocation=given)
    if json_path is not None:
        json_path.write_text(certificate.to_json() + "\n")
    if save_code is not None:
        save_code.write_bytes(certificate.code.to_bytes())
        student = getattr(certificate.code, "student", None)
        if student is not None:
            import torch

            torch.save(student.state_dict(), save_code.with_suffix(".student.pt"))
    render(certificate, fmt, certificate_table)


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


def verify(
    code: Annotated[
        Path, typer.Argument(help="Code word written by `bounds compute --save-code`.")
    ],
    task: Annotated[
        Optional[Task],  # noqa: UP045
        typer.Option(help="classify or lm, as given to compute (default: the certificate's)."),
    ] = None,
    data: DataSpec = None,
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
    loader: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="The loader of an opaque code word (compute --code-file)."),
    ] = None,
    certificate: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Certificate JSON to check against."),
    ] = None,
    delta: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="δ when no certificate is given."),
    ] = None,
    eod: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="lm: end-of-document token id, as given to compute."),
    ] = None,
    offsets: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="lm: .npy of document start offsets, as given to compute."),
    ] = None,
    token_dtype: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="lm: id type of a .bin stream, as given to compute."),
    ] = None,
    trust_pickle: TrustPickle = False,
    distributed: Distributed = False,
    quiet: Quiet = False,
) -> None:
    """Decode CODE, re-evaluate it on DATA, recompute the bounds; exit 1 on any difference.

    With --task lm the evaluation settings (context, stride, α grid, top-k, subsample and its
    seed, δ, batch size) are read from the certificate, which is required.
    """
    from bounds.pipeline import distributed as dist

    if not code.is_file():
        raise ValueError(f"code file {str(code)!r} does not exist or is not a file")
    claimed = None
    if certificate is not None:
        try:
            claimed = json.loads(Path(certificate).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read certificate {str(certificate)!r}: {error}") from None
    given = specs_given(task, model, arch, data, prior, loader, eod, offsets, token_dtype)
    settings, contradictions = _with_certificate_defaults(given, claimed, quiet)
    task = Task(settings["task"] or Task.classify.value)
    model, arch, data, prior, loader = (
        settings[k] for k in ("model", "arch", "data", "prior", "loader")
    )
    eod, token_dtype = settings["eod"], settings["token_dtype"]
    offsets = None if settings["offsets"] is None else Path(settings["offsets"])
    if task is Task.lm:
        if claimed is None:
            raise ValueError(
                "--task lm needs --certificate: the evaluation settings are read from it"
            )
        if delta is not None:
            raise ValueError("--delta is for a classifier without certificate; δ comes from it")
    else:
        stated = claimed.get("task") if isinstance(claimed, dict) else None
        if isinstance(stated, dict) and stated.get("name") == "lm":
            raise ValueError("the certificate is a language model's: pass --task lm")
        given = {
            "--eod": eod,
            "--offsets": offsets,
            "--token-dtype": token_dtype,
        }
        names = [name for name, value in given.items() if value is not None]
        if names:
            raise ValueError(f"{', '.join(names)} apply to --task lm only")
    data = DEFAULT_DATA[task] if data is None else data
    main_rank = True
    if distributed:
        dist.initialize("cpu")
        main_rank = dist.is_main()
    quiet = quiet or not main_rank
    from .specs import load_corpus, load_data

    if task is Task.lm:
        evaluated = load_corpus(data, eod=eod, offsets=offsets, dtype=token_dtype)
    else:
        evaluated = load_data(data, trust_pickle=trust_pickle)
    result = _reproduce(
        code, evaluated, claimed, model, arch, prior, loader, delta, trust_pickle, quiet
    )
    if not main_rank:
        return
    for line in result.report:
        console.print(line, highlight=False, markup=False)
    mismatches = contradictions + result.mismatches
    if mismatches:
        for mismatch in mismatches:
            sys.stderr.write(f"mismatch: {mismatch}\n")
        raise typer.Exit(1)


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


def _with_certificate_defaults(
    given: dict, claimed: dict | None, quiet: bool
) -> tuple[dict, list[str]]:
    """The command line's specs, each one not given taken from the certificate's invocation
    (said on standard error), and the given ones that contradict it (as mismatches)."""
    stated = claimed.get("invocation") if isinstance(claimed, dict) else None
    if not isinstance(stated, dict):
        return given, []
    settings, contradictions = dict(given), []
    for key, value in given.items():
        recorded = stated.get(key)
        if value is None and recorded is not None:
            settings[key] = recorded
            if not quiet:
                err_console.print(f"using the certificate's --{key.replace('_', '-')} {recorded}")
        elif value is not None and recorded is not None and str(value) != str(recorded):
            contradictions.append(
                f"--{key}: certificate says {recorded}, command line says {value}"
            )
    return settings, contradictions


def _skeleton(model: str | None, arch: str | None, trust_pickle: bool):
    """(model to decode into, its architecture spec) from --model or --arch."""
    from .specs import build_architecture, load_model

    if model is not None:
        loaded = load_model(model, arch, trust_pickle=trust_pickle)
        return loaded.model, loaded.architecture
    if arch is not None:
        return build_architecture(arch), arch
    raise ValueError("pass --model (the file given to compute) or --arch to rebuild the model")


def _reproduce(code, data, claimed, model, arch, prior, loader, delta, trust_pickle, quiet):
    """`reproduce` for the CLI: an opaque word is decoded by --loader or the built-in loaders
    (its file's bytes written to a temporary file for them to read), any other word into a
    fresh skeleton of the model of --model / --arch."""
    import tempfile

    from bounds.pipeline.certify import reproduce

    from .specs import describe_loader, load_model, load_prior

    section = claimed.get("code") if isinstance(claimed, dict) else None
    config = section.get("config") if isinstance(section, dict) else None
    opaque = isinstance(config, dict) and config.get("kind") == "opaque file"
    if isinstance(config, dict) and config.get("family") == "requential":
        from .specs import requential_from_certificate

        return reproduce(
            code.read_bytes(),
            None,
            data,
            certificate=claimed,
            code=requential_from_certificate(claimed["prior"]),
            quiet=quiet,
        )
    if not opaque:
        if loader is not None:
            raise ValueError("--loader decodes an opaque code word; this certificate's is not")
        skeleton, architecture = _skeleton(model, arch, trust_pickle)
        skeleton, prior_object = load_prior(prior, architecture, skeleton, rebuild=True)
        return reproduce(
            code.read_bytes(),
            skeleton,
            data,
            certificate=claimed,
            prior=prior_object,
            delta=delta,
            architecture=architecture,
            quiet=quiet,
        )
    if prior is not None:
        raise ValueError("an opaque code word has no --prior; its decoder is the --loader")

    def load_opaque(contents: bytes):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "decoded"
            path.write_bytes(contents)
            loaded = load_model(
                str(path), arch, trust_pickle=trust_pickle, loader=loader, opaque=True
            )
            return loaded.model

    return reproduce(
        code.read_bytes(),
        None,
        data,
        certificate=claimed,
        prior=describe_loader(loader, arch),
        load_opaque=load_opaque,
        quiet=quiet,
    )
