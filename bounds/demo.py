"""The built-in demo: bounds versus model width on MNIST-1D, from data generation to plot.

Headline (:func:`run_demo`, `bounds demo`): requential codes (Qiu, Finzi, Zheng, Zhang, Wilson,
arXiv 2607.11883, 2026; `quantize.requential`). One teacher, a `mnist1d_cnn` trained on the n
training examples, labels an input pool of MNIST-1D inputs drawn with another seed (independent
of the training sample); a *student* of each width is described by the teacher's coded selections
on the first N pool inputs, and the decoder re-trains it from them. The certified model of each
row is that decoded student; K counts the coded labels and does not grow with the student's
size, and a wider student learns the teacher's labels faster, so its labels cost fewer bits.
The δ budget is split evenly over the students so that all rows hold simultaneously.

The prior of a row (fixed before the training sample, no bits): the student architecture and
its initialisation seed, the pool, the schedule of the student's training, the shared-randomness
seed and the declared grid of label counts N (its index is in the word). The teacher is only the
encoder's oracle: it may be anything, including a network trained on the training sample.

Comparison (:func:`run_parameter_demo`, `bounds demo --parameters`): the earlier parameter-code
family, CNNs of growing width trained in random subspaces of one fixed dimension d (Li et al.
2018; Lotfi et al. 2022), each quantized, fine-tuned and certified by the code of its d
subspace coordinates.

The shipped settings (:class:`DemoSettings`, :class:`ParameterSettings`) were chosen by looking
at development runs on this very data (MNIST-1D, seed 0); see the README ("Bounds versus width").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bounds.pipeline.sweep import SweepResult
    from quantize.requential import Schedule

ARCHITECTURE = "bounds.models.architectures:mnist1d_cnn"


@dataclass(frozen=True)
class DataSettings:
    """What both demos share: n training and m test examples of MNIST-1D drawn with
    `data_seed`, the seed of the trained networks' initialisation and minibatch order, the
    batch size of their training, and the δ split over the rows."""

    n: int = 60000
    m: int = 10000
    data_seed: int = 0
    seed: int = 0
    batch_size: int = 256
    delta: float = 0.05

    @property
    def data_spec(self) -> str:
        return f"mnist1d:n={self.n},m={self.m},seed={self.data_seed}"


@dataclass(frozen=True)
class DemoSettings(DataSettings):
    """The requential demo. The student fields (widths, seeds, schedule, label grid; the pool
    is MNIST-1D inputs drawn with data_seed + 1, the convention of `bounds compute`) are the
    prior of every row; the teacher fields say how the encoder's oracle is trained.

    Chosen by looking at development runs on this data: students of widths 4–128 trained on
    the teacher's labels with about 50 settings (the default schedule of `quantize.requential`,
    2–64 Adam steps per chunk, chunks of 16–64, batches of 64–512, step sizes 0.003–0.02,
    5–20 final epochs, N from 1 000 to 24 000, teacher widths and temperatures). Anyone who
    re-tunes them on the same data must pay for the choice (⌈log₂ settings tried⌉ bits, or a
    δ share each).
    """

    widths: tuple[int, ...] = (8, 16, 32, 64, 128)
    # The teacher: the encoder's oracle, never certified.
    teacher_width: int = 64
    teacher_epochs: int = 10
    teacher_lr: float = 0.003
    # The prior of every student: its seeds, the schedule and the declared label grid.
    student_seed: int = 0
    shared_seed: int = 0
    label_counts: tuple[int, ...] = (5000,)
    chunk: int = 16
    steps_per_chunk: int = 16
    student_batch_size: int = 64
    student_lr: float = 0.007
    final_epochs: int = 10

    def schedule(self) -> Schedule:
        """The students' training schedule and label grid (part of every row's prior)."""
        from quantize.requential import Schedule

        return Schedule(
            chunk=self.chunk,
            steps_per_chunk=self.steps_per_chunk,
            batch_size=self.student_batch_size,
            lr=self.student_lr,
            final_epochs=self.final_epochs,
            label_counts=self.label_counts,
            variant="requential",
        )

    @property
    def pool_spec(self) -> str:
        """The pool as a data spec (what `bounds verify` rebuilds it from)."""
        return f"mnist1d:n={max(self.label_counts)},m=1,seed={self.data_seed + 1}"


QUICK = DemoSettings(
    widths=(8, 16, 32, 64),
    teacher_width=32,
    teacher_epochs=10,
    teacher_lr=0.01,
    n=10000,
    m=2000,
    label_counts=(2000,),
)


@dataclass(frozen=True)
class ParameterSettings(DataSettings):
    """The parameter-code comparison: subspace training, quantization grid, fine-tuning (all of
    it fixed before the data; the subspace seed and dimension are the prior)."""

    widths: tuple[int, ...] = (8, 16, 32, 64, 128)
    dim: int = 1000
    epochs: int = 8
    lr_base: float = 0.05
    levels: tuple[int, ...] = (4, 8, 16, 32)
    schemes: tuple[str, ...] = ("kmeans", "uniform")
    qat_epochs: int = 2
    qat_lr: float = 0.003


PARAMETER_QUICK = ParameterSettings(
    widths=(4, 8, 16, 32, 64), dim=500, epochs=6, n=10000, m=2000, levels=(8, 16, 32), qat_epochs=1
)


def learning_rate(lr_base: float, network_parameters: int) -> float:
    """lr_base·√(D/1000) for a network of D parameters (the parameter-code family).

    Adam moves each coordinate of w by about its step size, and P's columns have unit norm,
    so each of the D network parameters moves by about lr·√(d/D); scaling the step size by
    √D keeps that per-parameter step the same across widths. (Training choices are not part
    of the prior: the code word describes whatever weights training produced.)
    """
    return lr_base * (network_parameters / 1000) ** 0.5


def _data(n: int, m: int, seed: int):
    from bounds.tasks.classification.data import MNIST1DSpec, mnist1d

    spec = MNIST1DSpec(n=n, m=m, seed=seed)
    return mnist1d(spec, "train"), mnist1d(spec, "test")


def _write_reports(result: SweepResult, out: Path, settings: Any) -> None:
    from bounds.reports.plot import plot_sweep

    (out / "sweep.json").write_text(result.to_json() + "\n")
    (out / "sweep.md").write_text(result.to_markdown())
    (out / "sweep.tex").write_text(result.to_latex())
    (out / "settings.json").write_text(json.dumps(asdict(settings), indent=2) + "\n")
    for suffix in ("png", "pdf"):
        plot_sweep(result, out / f"bounds.{suffix}")


def train_teacher(settings: DemoSettings, train, *, quiet: bool = False):
    """The teacher: `mnist1d_cnn(teacher_width)` trained on the training sample (AdamW, cosine
    schedule), in eval mode."""
    import torch

    from bounds.models.architectures import mnist1d_cnn
    from bounds.models.training import train_classifier

    torch.manual_seed(settings.seed)
    teacher = mnist1d_cnn(settings.teacher_width)
    train_classifier(
        teacher,
        train,
        epochs=settings.teacher_epochs,
        lr=settings.teacher_lr,
        batch_size=settings.batch_size,
        seed=settings.seed,
        quiet=quiet,
    )
    return teacher.eval()


def student_codes(settings: DemoSettings, classes: int = 10) -> dict[int, Any]:
    """width → the requential code family of that student (`RequentialCodes`), every one with
    the same pool, schedule and seeds."""
    from bounds.pipeline.codes import RequentialCodes
    from bounds.pipeline.decoder import Architecture
    from bounds.tasks.classification.data import MNIST1DSpec, mnist1d
    from quantize.requential import RequentialPrior

    pool_data = mnist1d(
        MNIST1DSpec(n=max(settings.label_counts), m=1, seed=settings.data_seed + 1), "train"
    )
    pool = pool_data.tensors[0]
    schedule = settings.schedule()
    codes = {}
    for width in settings.widths:
        student = Architecture.from_spec(f"{ARCHITECTURE}:width={width}")
        prior = RequentialPrior(
            student.build,
            student.fingerprint,
            student.spec,
            settings.student_seed,
            pool,
            schedule,
            settings.shared_seed,
            classes,
        )
        codes[width] = RequentialCodes(prior, pool_spec=settings.pool_spec)
    return codes


def run_demo(out: Path, settings: DemoSettings = DemoSettings(), *, quiet: bool = False):
    """Train the teacher, certify every student width by its requential code, report.

    Files in `out`: `teacher.pt` (the teacher's state dict), `student-W.code` (code words),
    `student-W.pt` (the decoded students' state dicts) and `student-W.json` (their
    certificates: `bounds verify out/student-W.code --certificate out/student-W.json`
    re-trains the student and re-checks the row), `sweep.json`,
    `sweep.md`, `sweep.tex`, `bounds.png`, `bounds.pdf`, `settings.json`. Returns the
    `SweepResult`; its rows are sorted by the students' sizes.
    """
    import torch

    from bounds.pipeline.sweep import sweep

    out.mkdir(parents=True, exist_ok=True)
    train, test = _data(settings.n, settings.m, settings.data_seed)
    teacher = train_teacher(settings, train, quiet=quiet)
    torch.save(teacher.state_dict(), out / "teacher.pt")
    codes = student_codes(settings)
    names = {width: f"width {width}" for width in settings.widths}
    result = sweep(
        [(names[width], teacher) for width in settings.widths],
        train,
        test_data=test,
        delta=settings.delta,
        simultaneous=True,
        model_kwargs={names[width]: {"code": codes[width]} for width in settings.widths},
        quiet=quiet,
    )
    invocation = {"data": settings.data_spec}
    by_name = {name: width for width, name in names.items()}
    for row in result.rows:
        width = by_name[row.name]
        certificate = replace(row.certificate, invocation=invocation)
        (out / f"student-{width}.code").write_bytes(certificate.code.to_bytes())
        torch.save(certificate.code.student.state_dict(), out / f"student-{width}.pt")
        (out / f"student-{width}.json").write_text(certificate.to_json() + "\n")
    _write_reports(result, out, settings)
    return result


def run_parameter_demo(
    out: Path, settings: ParameterSettings = ParameterSettings(), *, quiet: bool = False
):
    """Train, certify and report the subspace width family by parameter codes.

    Files: `width-W.pt` (subspace checkpoints), `width-W.code` (code words), `sweep.json`,
    `sweep.md`, `sweep.tex`, `bounds.png`, `bounds.pdf`, `settings.json`.
    Returns the `SweepResult`.
    """
    import torch

    from bounds.models.architectures import mnist1d_cnn
    from bounds.models.training import train_classifier
    from bounds.pipeline.sweep import sweep
    from quantize import Subspace, product_grid

    out.mkdir(parents=True, exist_ok=True)
    train, test = _data(settings.n, settings.m, settings.data_seed)
    models = []
    for width in settings.widths:
        torch.manual_seed(settings.seed)
        metadata = {"arch": ARCHITECTURE, "arch_kwargs": {"width": width}}
        network = mnist1d_cnn(width)
        size = sum(parameter.numel() for parameter in network.parameters())
        model = Subspace(
            network, settings.dim, settings.seed, init_seed=settings.seed, metadata=metadata
        )
        train_classifier(
            model,
            train,
            epochs=settings.epochs,
            lr=learning_rate(settings.lr_base, size),
            batch_size=settings.batch_size,
            seed=settings.seed,
            quiet=quiet,
        )
        model.save(out / f"width-{width}.pt")
        models.append((f"width {width}", model))
    result = sweep(
        models,
        train,
        test_data=test,
        delta=settings.delta,
        simultaneous=True,
        grid=product_grid(levels=settings.levels, schemes=settings.schemes, groups=("global",)),
        qat_epochs=settings.qat_epochs,
        qat_lr=settings.qat_lr,
        model_kwargs={
            name: {"architecture": f"{ARCHITECTURE}:width={width}"}
            for (name, _), width in zip(models, settings.widths, strict=True)
        },
        quiet=quiet,
    )
    for row, width in zip(result.rows, sorted(settings.widths), strict=True):
        (out / f"width-{width}.code").write_bytes(row.certificate.code.to_bytes())
    _write_reports(result, out, settings)
    return result


def settings_for(quick: bool, parameters: bool = False, **overrides):
    """The full or quick settings of the requential demo (or, with `parameters`, of the
    parameter-code comparison), with any explicit overrides applied."""
    if parameters:
        base = PARAMETER_QUICK if quick else ParameterSettings()
    else:
        base = QUICK if quick else DemoSettings()
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
