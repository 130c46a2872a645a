"""Figure of a sweep for a paper: how the bound and the code length change with model size.

One column wide (3.4 in), two panels sharing a logarithmic x axis (network parameters):
top, the headline Occam bound, the decoded model's training and test errors and the float
model's training error; bottom, the code length K in bits on a linear axis that starts at
zero (so a flat K looks flat and a falling K falls by what it really falls), and bits per
parameter on a logarithmic right axis.

Requential rows (``code_config["family"] == "requential"``) certify a *student* re-trained by
the decoder from a teacher's coded labels: the x axis is then the student's size, the decoded
error is the student's, and the "float" model is the teacher, drawn as a horizontal reference
line when every row has the same one.

Drawn with ``matplotlib.figure.Figure`` on an Agg canvas, so no pyplot state and no global
backend is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from bounds.pipeline.sweep import SweepResult
    from bounds.reports.certificate import Certificate

#: Output formats, chosen by the file suffix.
PLOT_SUFFIXES = (".png", ".pdf")

_WIDTH_INCHES = 3.4  # one column of a two-column paper
_HEIGHT_INCHES = 4.2
_STYLE = {
    "font.size": 7,
    "axes.labelsize": 7,
    "legend.fontsize": 6,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
    "lines.linewidth": 1.0,
    "lines.markersize": 3,
}


def check_plot_path(path: str | PathLike[str]) -> Path:
    """The path as a Path, after checking its suffix names a supported format."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise ValueError(
            f"plot file {str(path)!r} must end in {' or '.join(PLOT_SUFFIXES)} (the format)"
        )
    return path


def _compact(count: float) -> str:
    """A parameter count in at most three significant digits: 250, 1.26k, 12.9k, 1.2M."""
    for scale, suffix in ((1.0, ""), (1e3, "k"), (1e6, "M"), (1e9, "G"), (1e12, "T")):
        text = f"{count / scale:.3g}"
        if float(text) < 1000:
            return text + suffix
    return f"{count:.3g}"


def _requential(certificates: list[Certificate]) -> bool:
    return all(cert.code_config.get("family") == "requential" for cert in certificates)


def plot_sweep(result: SweepResult, path: str | PathLike[str], *, dpi: int = 300) -> Figure:
    """Draw `result` and write it to `path` (PNG or PDF by suffix); return the Figure."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    path = check_plot_path(path)
    certificates = result.certificates
    params = [cert.model_params for cert in certificates]
    headline = certificates[0].best.method
    students = _requential(certificates)
    decoded = "student train error" if students else "quantized train error"
    tested = "student test error" if students else "test error (quantized)"
    series: list[tuple[str, str, str, Callable[[Certificate], float | None]]] = [
        (
            f"{headline} Occam bound",
            "o-",
            "C0",
            lambda cert: cert.bounds[cert.headline[0]][headline].value,
        ),
        (decoded, "s-", "C1", lambda cert: cert.train_loss("decoded")),
        ("float train error", "^--", "C2", lambda cert: cert.train_loss("float")),
        (tested, "d-", "C3", lambda cert: cert.test_loss()),
    ]
    teacher = {cert.train_loss("float") for cert in certificates}
    with matplotlib.rc_context(_STYLE):
        figure = Figure(figsize=(_WIDTH_INCHES, _HEIGHT_INCHES), layout="constrained")
        FigureCanvasAgg(figure)
        errors, lengths = figure.subplots(2, 1, sharex=True)

        highest = 0.0
        for label, style, color, value in series:
            points = [(c.model_params, value(c)) for c in certificates if value(c) is not None]
            if not points:  # the test error only when test data was given
                continue
            x, y = zip(*points, strict=True)
            highest = max(highest, *y)
            if students and label == "float train error":
                # One teacher for every row: a reference, not a function of the student's size.
                (level,) = teacher if len(teacher) == 1 else (None,)
                if level is not None:
                    errors.axhline(level, color=color, linestyle="--", label="teacher train error")
                    continue
                label = "teacher train error"
            errors.plot(x, y, style, color=color, label=label)
        errors.set_xscale("log")
        errors.set_ylabel("error rate")
        errors.set_ylim(0, 1.08 * highest if highest > 0 else 1.0)
        kind = "simultaneous" if result.simultaneous else "separate claims"
        family = "requential codes, " if students else ""
        errors.set_title(f"{family}bounds at δ = {result.delta:g} ({kind})")
        errors.legend(loc="best", frameon=True, framealpha=0.85, edgecolor="none")
        errors.grid(True, which="major", alpha=0.3)

        per_parameter = lengths.twinx()
        code_bits = [cert.code_bits for cert in certificates]
        lines = [
            lengths.plot(params, code_bits, "s-", color="C5", label="code length K (left)")[0],
            per_parameter.plot(
                params,
                [cert.bits_per_param for cert in certificates],
                "o--",
                color="C4",
                label="bits per parameter (right, log)",
            )[0],
        ]
        lengths.set_xscale("log")
        # Ticks at the models' sizes: log-axis minor labels of a narrow range overlap.
        lengths.xaxis.set_major_locator(FixedLocator(sorted(set(params))))
        lengths.xaxis.set_major_formatter(FuncFormatter(lambda value, _: _compact(value)))
        lengths.xaxis.set_minor_formatter(NullFormatter())
        lengths.set_xlabel("student parameters" if students else "network parameters")
        # Linear from zero: the change of K is shown at its true relative size.
        lengths.set_ylim(0, 1.12 * max(code_bits) if max(code_bits) > 0 else 1.0)
        lengths.yaxis.set_major_formatter(FuncFormatter(lambda value, _: _compact(value)))
        lengths.set_ylabel("code length K (bits)")
        per_parameter.set_yscale("log")
        per_parameter.set_ylabel("bits per parameter")
        # Above the panel: "best" cannot see the twin axis' line and would cover it.
        lengths.legend(
            handles=lines,
            loc="lower center",
            bbox_to_anchor=(0.5, 1.0),
            ncol=2,
            frameon=False,
        )
        lengths.grid(True, which="major", alpha=0.3)

        figure.savefig(path, format=path.suffix.lower().lstrip("."), dpi=dpi)
    return figure
