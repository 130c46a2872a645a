"""`bounds verify CODE`: decode a code word again and re-check its certificate."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from .options import (
    DEFAULT_DATA,
    Arch,
    DataSpec,
    Device,
    Distributed,
    Eod,
    Loader,
    Offsets,
    Quiet,
    Task,
    TokenDtype,
    TrustPickle,
    check_inputs,
    specs_given,
)
from .output import console, err_console


def verify(
    code: Annotated[
        Path,
        typer.Argument(
            help="Code word written by `bounds compute --save-code`.",
            metavar="CODE",
            show_default=False,
        ),
    ],
    task: Annotated[
        Task | None,
        typer.Option(help="classify or lm, as given to compute (default: the certificate's)."),
    ] = None,
    data: DataSpec = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="The model file given to compute (supplies architecture and prior; "
            "its trained weights are not used)."
        ),
    ] = None,
    arch: Arch = None,
    prior: Annotated[str | None, typer.Option(help="Prior spec, as given to compute.")] = None,
    loader: Loader = None,
    certificate: Annotated[
        Path | None, typer.Option(help="Certificate JSON to check against.")
    ] = None,
    delta: Annotated[float | None, typer.Option(help="δ when no certificate is given.")] = None,
    eod: Eod = None,
    offsets: Offsets = None,
    token_dtype: TokenDtype = None,
    trust_pickle: TrustPickle = False,
    device: Device = "cpu",
    distributed: Distributed = False,
    quiet: Quiet = False,
) -> None:
    """Decode CODE, re-evaluate it on DATA, recompute the bounds; exit 1 on any difference.

    With --task lm the evaluation settings (context, stride, α grid, top-k, subsample and its
    seed, δ, batch size) are read from the certificate, which is required.
    """
    if not code.is_file():
        raise ValueError(f"code file {str(code)!r} does not exist or is not a file")
    check_inputs(
        models=[] if model is None else [model],
        data=[data],
        data_kind="token file" if task is Task.lm else "data file",
        device=device,
    )
    from bounds.pipeline import distributed as dist

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
        dist.initialize(device)
        main_rank = dist.is_main()
    quiet = quiet or not main_rank
    from .specs import load_corpus, load_data

    if task is Task.lm:
        evaluated = load_corpus(data, eod=eod, offsets=offsets, dtype=token_dtype)
    else:
        evaluated = load_data(data, trust_pickle=trust_pickle)
    result = _reproduce(
        code, evaluated, claimed, model, arch, prior, loader, delta, trust_pickle, device, quiet
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


def _reproduce(code, data, claimed, model, arch, prior, loader, delta, trust_pickle, device, quiet):
    """`reproduce` for the CLI: a requential word re-trains its student from the prior the
    certificate records, an opaque word is decoded by --loader or the built-in loaders (its
    file's bytes written to a temporary file for them to read), any other word into a fresh
    skeleton of the model of --model / --arch."""
    from bounds.pipeline.certify import reproduce

    section = claimed.get("code") if isinstance(claimed, dict) else None
    config = section.get("config") if isinstance(section, dict) else None
    family = config.get("family") if isinstance(config, dict) else None
    opaque = isinstance(config, dict) and config.get("kind") == "opaque file"
    if family == "requential":
        from .specs import requential_from_certificate

        skeleton, how = None, {"code": requential_from_certificate(claimed["prior"])}
    elif opaque:
        skeleton, how = None, _opaque_decoder(arch, prior, loader, trust_pickle)
    else:
        if loader is not None:
            raise ValueError("--loader decodes an opaque code word; this certificate's is not")
        from .specs import load_prior

        skeleton, architecture = _skeleton(model, arch, trust_pickle)
        skeleton, prior_object = load_prior(prior, architecture, skeleton, rebuild=True)
        how = {"prior": prior_object, "delta": delta, "architecture": architecture}
    word = code.read_bytes()
    return reproduce(word, skeleton, data, certificate=claimed, device=device, quiet=quiet, **how)


def _opaque_decoder(arch, prior, loader, trust_pickle) -> dict:
    """The prior and decoder of an opaque word: the declared loader reads the word's bytes."""
    import tempfile

    from .specs import describe_loader, load_model

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

    return {"prior": describe_loader(loader, arch), "load_opaque": load_opaque}
