"""`bounds compute MODEL`: certify a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group
from rich.table import Table

from bounds.tasks.classification.task import DEFAULT_LEVELS

from .options import (
    DEFAULT_DATA,
    Arch,
    CodeKind,
    CodeOption,
    Coder,
    DataSpec,
    Delta,
    Device,
    Distributed,
    Eod,
    LabelsOption,
    Loader,
    Offsets,
    PoolOption,
    QatEpochs,
    QatLr,
    Quiet,
    Search,
    SequenceLength,
    SharedSeed,
    StartToken,
    StudentSeed,
    Task,
    TaskChoice,
    TestData,
    TokenDtype,
    TrustPickle,
    check_inputs,
    parse_floats,
    parse_ints,
    requential_options,
    search_grid,
    specs_given,
)
from .output import FittedTables, Format, render


def certificate_table(certificate) -> Table | Group:
    table = Table(title=certificate.claim, title_justify="left", show_header=False)
    table.add_column("quantity")
    table.add_column("value", overflow="fold")
    for name, value in certificate.summary_rows():
        table.add_row(name, value)
    if not hasattr(certificate, "bound_rows"):
        return table
    header, *rows = certificate.bound_rows()
    return Group(table, FittedTables(header, rows, title="bounds (each a claim at δ)"))


def compute(
    model: Annotated[
        str,
        typer.Argument(
            help="Model file: state dict, .safetensors, subspace checkpoint, Hugging Face "
            "directory, TorchScript archive or pickled module (the last two with --code-file).",
            metavar="MODEL",
            show_default=False,
        ),
    ],
    arch: Arch = None,
    task: TaskChoice = Task.classify,
    data: DataSpec = None,
    test_data: TestData = None,
    delta: Delta = 0.05,
    levels: Annotated[
        str | None,
        typer.Option(
            help="Quantization levels to search (default 3,4,6,8,12,16,24,32,48,64; lm 8,16,32)."
        ),
    ] = None,
    schemes: Annotated[
        str | None, typer.Option(help="Quantizers to search (default kmeans,uniform; lm kmeans).")
    ] = None,
    coder: Coder = "auto",
    qat_epochs: QatEpochs = 0,
    qat_lr: QatLr = 1e-4,
    search: Search = None,
    prior: Annotated[
        str | None,
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
            metavar="",
        ),
    ] = False,
    loader: Loader = None,
    context: Annotated[
        int | None, typer.Option(help="lm: tokens of context per window (default 256).")
    ] = None,
    stride: Annotated[
        int | None, typer.Option(help="lm: window stride (default: the context).")
    ] = None,
    eod: Eod = None,
    offsets: Offsets = None,
    test_offsets: Annotated[
        Path | None,
        typer.Option(help="lm: .npy of document start offsets of the --test-data stream."),
    ] = None,
    token_dtype: TokenDtype = None,
    alphas: Annotated[
        str | None,
        typer.Option(help="lm: smoothing grid α (comma-separated; default 2^-1..2^-10)."),
    ] = None,
    top_k: Annotated[
        str | None, typer.Option(help="lm: top-k errors to bound (comma-separated; default 1).")
    ] = None,
    subsample: Annotated[
        int | None,
        typer.Option(help="lm: evaluate s documents drawn at random (half of δ pays for it)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="lm: seed of the subsample.")] = 0,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Evaluation batch size (default 1024 examples; lm 8 windows)."),
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the certificate as JSON here.")
    ] = None,
    save_code: Annotated[
        Path | None, typer.Option(help="Write the code word here (for `bounds verify`).")
    ] = None,
    trust_pickle: TrustPickle = False,
    device: Device = "cpu",
    distributed: Distributed = False,
    code: CodeOption = CodeKind.parameters,
    student_arch: Annotated[
        str | None,
        typer.Option(help="requential: the student's architecture, module:factory[:k=v,...]."),
    ] = None,
    pool: PoolOption = None,
    labels: LabelsOption = None,
    student_seed: StudentSeed = 0,
    shared_seed: SharedSeed = 0,
    sequence_length: SequenceLength = None,
    start_token: StartToken = None,
    quiet: Quiet = False,
) -> None:
    """Certify MODEL: compress it, evaluate the decoded model on DATA, and bound its error."""
    check_inputs(
        delta=delta,
        models=[model],
        data=[data, test_data],
        data_kind="token file" if task is Task.lm else "data file",
        outputs=[(json_path, "JSON output"), (save_code, "code file")],
        device=device,
    )
    import bounds
    from bounds.pipeline import distributed as dist

    from .specs import default_start, load_corpus, load_data, load_model

    invocation = specs_given(task, model, arch, data, prior, loader, eod, offsets, token_dtype)
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
        "--sequence-length": sequence_length,
        "--start-token": start_token,
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
            "--search": search,
        }
        named = [name for name, value in clashing.items() if value]
        if named:
            raise ValueError(f"{', '.join(named)} cannot be used with --code {code.value}")
        if student_arch is None:
            raise ValueError(f"--code {code.value} needs --student-arch (the certified model)")
        by_task = {
            Task.lm: {"--pool": pool},
            Task.classify: {"--sequence-length": sequence_length, "--start-token": start_token},
        }[task]
        named = [name for name, value in by_task.items() if value is not None]
        if named:
            other = "classifiers" if task is Task.lm else "--task lm"
            raise ValueError(f"{', '.join(named)} apply to {other} only")
    main_rank = True
    if distributed:
        dist.initialize(device)
        main_rank = dist.is_main()
    quiet = quiet or not main_rank
    data = DEFAULT_DATA[task] if data is None else data
    invocation["data"] = data
    context = 256 if context is None else context
    if code is not CodeKind.parameters:
        network = load_model(model, arch, trust_pickle=trust_pickle).model
        requential = requential_options(code, pool, labels, student_seed, shared_seed)
        if task is Task.lm:
            family = requential.language_family(
                network,
                student_arch,
                sequence_length=context if sequence_length is None else sequence_length,
                start_token=start_token if start_token is not None else default_start(data, eod),
            )
        else:
            family = requential.family(network, student_arch, data)
        common = dict(code=family, delta=delta, device=device, quiet=quiet)
    else:
        network, common = _parameter_codes(
            model, arch, prior, loader, code_file, trust_pickle, task, levels, schemes, coder
        )
        common.update(
            delta=delta,
            search=None if search is None else search.value,
            device=device,
            quiet=quiet,
        )
    from bounds.pipeline.certify import certify, certify_lm

    if task is Task.lm:

        def corpus(spec: str, split: str, cuts: Path | None):
            return load_corpus(spec, eod=eod, offsets=cuts, dtype=token_dtype, default_split=split)

        certificate = certify_lm(
            network,
            corpus(data, "train", offsets),
            test_corpus=None if test_data is None else corpus(test_data, "test", test_offsets),
            context=context,
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
            network,
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


def _parameter_codes(
    model, arch, prior, loader, code_file, trust_pickle, task, levels, schemes, coder
):
    """(the model to code, certify's options) for the parameter codes: the loaded model with
    its declared prior, or an opaque file's word, and the search grid of the options."""
    from .specs import describe_loader, load_model, load_prior

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
            levels or (",".join(map(str, DEFAULT_LEVELS)) if task is Task.classify else "8,16,32"),
            schemes or ("kmeans,uniform" if task is Task.classify else "kmeans"),
            coder,
        )
    options = dict(prior=prior_object, grid=grid, architecture=loaded.architecture, opaque=opaque)
    return loaded.model, options


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
