"""`bounds sweep MODEL...`: certify a family of models and tabulate or plot the bounds.

MODEL arguments: a model file, a directory (every *.pt, *.pth and *.safetensors file in it,
sorted by name) or a glob pattern (its matches, sorted; a pattern matching nothing is an
error). Architectures: ``--arch`` given once builds every model; given once per model it is
paired with the model files in the order they are listed after expansion (a state dict
that does not fit its architecture is an error, so a wrong pairing cannot pass silently);
omitted, each checkpoint must name its own (subspace checkpoints saved with metadata
``{"arch": ..., "arch_kwargs": {...}}``).
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Annotated, Optional

import typer

from bounds.tasks.classification.task import DEFAULT_LEVELS

from .options import (
    CodeKind,
    CodeOption,
    Coder,
    Delta,
    Device,
    LabelsOption,
    Levels,
    PoolOption,
    QatEpochs,
    QatLr,
    Quiet,
    Schemes,
    Search,
    SharedSeed,
    StudentSeed,
    TestData,
    TrainData,
    TrustPickle,
    check_inputs,
    requential_options,
    search_grid,
)
from .output import FittedTables, Format, err_console, render

MODEL_SUFFIXES = (".pt", ".pth", ".safetensors")
LEVELS, SCHEMES = ",".join(map(str, DEFAULT_LEVELS)), "kmeans,uniform"
_GLOB_CHARACTERS = "*?["


def expand_models(specs: list[str]) -> list[Path]:
    """The model files named by files, directories and glob patterns, each once."""
    files: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in MODEL_SUFFIXES)
            if not found:
                raise ValueError(
                    f"model directory {spec!r} holds no {', '.join(MODEL_SUFFIXES)} files"
                )
        elif path.is_file():
            found = [path]
        elif any(char in spec for char in _GLOB_CHARACTERS):
            found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            if not found:
                raise ValueError(f"model pattern {spec!r} matches no file")
        else:
            raise ValueError(f"model file {spec!r} does not exist")
        files += found
    seen: dict[Path, Path] = {}
    for file in files:
        if file.resolve() in seen:
            raise ValueError(f"model file {str(file)!r} is named twice (by a file, folder or glob)")
        seen[file.resolve()] = file
    return files


def model_names(files: list[Path]) -> list[str]:
    """File names when they tell the models apart, the paths as given otherwise."""
    names = [file.name for file in files]
    return names if len(set(names)) == len(names) else [str(file) for file in files]


def student_names(specs: list[str]) -> dict[str, str]:
    """Row name → student spec: the options alone when every spec names the same factory."""
    factories = {spec.rsplit(":", 1)[0] if spec.count(":") > 1 else spec for spec in specs}
    short = [spec.split(":", 2)[2] if spec.count(":") > 1 else spec for spec in specs]
    names = short if len(factories) == 1 and len(set(short)) == len(short) else specs
    if len(set(names)) != len(names):
        raise ValueError("--student-arch names the same student twice")
    return dict(zip(names, specs, strict=True))


def architectures(arch: list[str] | None, count: int) -> list[str | None]:
    """One architecture spec (or None: read it from the checkpoint) per model."""
    if not arch:
        return [None] * count
    if len(arch) == 1:
        return arch * count
    if len(arch) != count:
        raise ValueError(
            f"--arch is given {len(arch)} times for {count} models: give it once (for every "
            "model) or once per model, in the order of the model files"
        )
    return list(arch)


def sweep_table(result) -> FittedTables:
    header, cells = result.table()
    return FittedTables(header, cells, title=result.claim, caption=result.shares_text())


OutputPath = Optional[Path]  # noqa: UP045 - Typer reads the annotation at run time


def sweep(
    models: Annotated[
        list[str],
        typer.Argument(
            help="Model files, directories (every *.pt, *.pth, *.safetensors inside) or glob "
            "patterns.",
            metavar="MODEL",
            show_default=False,
        ),
    ],
    arch: Annotated[
        list[str] | None,
        typer.Option(
            help="Architecture factory, module:factory[:key=value,...]: once for every model, "
            "or once per model in the order of the expanded model files. Omit it for "
            "checkpoints that name their architecture."
        ),
    ] = None,
    data: TrainData = "mnist1d",
    test_data: TestData = None,
    delta: Delta = 0.05,
    simultaneous: Annotated[
        bool,
        typer.Option(
            "--simultaneous/--separate",
            help="Split δ evenly over the models so every row holds at once, or make each "
            "row a separate claim at δ.",
            metavar="",
        ),
    ] = False,
    levels: Levels = LEVELS,
    schemes: Schemes = SCHEMES,
    coder: Coder = "auto",
    qat_epochs: QatEpochs = 0,
    qat_lr: QatLr = 1e-4,
    search: Search = None,
    plot: Annotated[
        list[Path] | None,
        typer.Option(help="Write the figure here (.png or .pdf); repeat for both."),
    ] = None,
    json_path: Annotated[
        OutputPath, typer.Option("--json", help="Also write the sweep as JSON here.")
    ] = None,
    latex_path: Annotated[
        OutputPath, typer.Option("--latex", help="Also write the LaTeX table here.")
    ] = None,
    markdown_path: Annotated[
        OutputPath, typer.Option("--markdown", help="Also write the Markdown table here.")
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
    quiet: Quiet = False,
    trust_pickle: TrustPickle = False,
    device: Device = "cpu",
    code: CodeOption = CodeKind.parameters,
    student_arch: Annotated[
        list[str] | None,
        typer.Option(
            help="requential: a student architecture, module:factory[:k=v,...]; repeat it for "
            "one row per student (MODEL is then the one teacher)."
        ),
    ] = None,
    pool: PoolOption = None,
    labels: LabelsOption = None,
    student_seed: StudentSeed = 0,
    shared_seed: SharedSeed = 0,
) -> None:
    """Certify every MODEL on DATA: one row per model, sorted by parameter count."""
    from bounds.reports.plot import check_plot_path, plot_sweep

    plots = [check_plot_path(path) for path in plot or []]
    files = expand_models(models)
    check_inputs(
        delta=delta,
        data=[data, test_data],
        outputs=[
            *((path, "plot") for path in plots),
            (json_path, "JSON output"),
            (latex_path, "LaTeX output"),
            (markdown_path, "Markdown output"),
        ],
        device=device,
    )
    import bounds

    from .specs import load_data, load_model

    grid = search_grid(levels, schemes, coder)
    specs = architectures(arch, len(files))

    loaded = [
        load_model(str(file), spec, trust_pickle=trust_pickle)
        for file, spec in zip(files, specs, strict=True)
    ]
    named = dict(zip(model_names(files), loaded, strict=True))
    train = load_data(data, trust_pickle=trust_pickle)
    test = (
        None
        if test_data is None
        else load_data(test_data, default_split="test", trust_pickle=trust_pickle)
    )

    def announce(index: int, count: int, name: str) -> None:
        if not quiet:
            err_console.print(f"certifying model {index}/{count}: {name}", highlight=False)

    if code is CodeKind.parameters:
        if student_arch:
            raise ValueError("--student-arch applies to --code requential or prequential")
        models = {name: model.model for name, model in named.items()}
        per_model = {name: {"architecture": m.architecture} for name, m in named.items()}
        family_options = {"grid": grid, "qat_epochs": qat_epochs, "qat_lr": qat_lr}
        family_options["search"] = None if search is None else search.value
    else:
        if len(named) != 1 or not student_arch:
            raise ValueError(
                f"--code {code.value} sweeps students of one teacher: give one MODEL (the "
                "teacher) and --student-arch once per student"
            )
        if levels != LEVELS or schemes != SCHEMES or qat_epochs or search is not None:
            raise ValueError(
                f"--levels, --schemes, --qat-epochs and --search do not apply to --code "
                f"{code.value}"
            )
        teacher = next(iter(named.values())).model
        rows = student_names(student_arch)
        models = dict.fromkeys(rows, teacher)
        options = requential_options(code, pool, labels, student_seed, shared_seed)
        per_model = {
            name: {"code": options.family(teacher, spec, data)} for name, spec in rows.items()
        }
        family_options = {}
    family_options.update(delta=delta, simultaneous=simultaneous, device=device, quiet=quiet)
    result = bounds.sweep(
        models, train, test_data=test, model_kwargs=per_model, progress=announce, **family_options
    )
    texts = (
        (json_path, result.to_json() + "\n"),
        (latex_path, result.to_latex()),
        (markdown_path, result.to_markdown()),
    )
    for path, text in texts:
        if path is not None:
            path.write_text(text)
    for path in plots:
        plot_sweep(result, path)
    render(result, fmt, sweep_table)
