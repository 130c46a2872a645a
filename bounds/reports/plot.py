"""Figure of a sweep for a paper: how the bound and the code length change with model size.

One column wide (3.4 in), two panels sharing a logarithmic x axis (network parameters):
top, the headline Occam bound, the quantized and float training errors and the test error;
bottom, bits per parameter (left axis) and the code length K in bits (right axis, log).
Drawn with ``matplotlib.figure.Figure`` on an Agg canvas, so no pyplot state and no
global backend is touched.
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
    series: list[tuple[str, str, Callable[[Certificate], float | None]]] = [
        (
            f"{headline} Occam bound",
            "o-",
            lambda cert: cert.bounds[cert.headline[0]][headline].value,
        ),
        ("quantized train error", "s-", lambda cert: cert.train_loss("decoded")),
        ("float train error", "^--", lambda cert: cert.train_loss("float")),
        (
            "test error (quantized)",
            "d-",
            lambda cert: cert.test_loss(),
        ),
    ]
    with matplotlib.rc_context(_STYLE):
        figure = Figure(figsize=(_WIDTH_INCHES, _HEIGHT_INCHES), layout="constrained")
        FigureCanvasAgg(figure)
        errors, bits = figure.subplots(2, 1, sharex=True)

        highest = 0.0
        for label, style, value in series:
            points = [(c.model_params, value(c)) for c in certificates if value(c) is not None]
            if points:  # the test error only when test data was given
                x, y = zip(*points, strict=True)
                errors.plot(x, y, style, label=label)
                highest = max(highest, *y)
        errors.set_xscale("log")
        errors.set_ylabel("error rate")
        errors.set_ylim(0, 1.08 * highest if highest > 0 else 1.0)
        kind = "simultaneous" if result.simultaneous else "separate claims"
        errors.set_title(f"bounds at δ = {result.delta:g} ({kind})")
        errors.legend(loc="best", frameon=False)
        errors.grid(True, which="major", alpha=0.3)

        code_length = bits.twinx()
        lines = [
            axis.plot(
                params, [value(cert) for cert in certificates], style, color=color, label=label
            )[0]
            for axis, value, style, color, label in (
                (bits, lambda cert: cert.bits_per_param, "o-", "C4", "bits per parameter (left)"),
                (
                    code_length,
                    lambda cert: cert.code_bits,
                    "s--",
                    "C5",
                    "code length K in bits (right)",
                ),
            )
        ]
        bits.set_xscale("log")
        # Ticks at the models' sizes: log-axis minor labels of a narrow range overlap.
        bits.xaxis.set_major_locator(FixedLocator(sorted(set(params))))
        bits.xaxis.set_major_formatter(FuncFormatter(lambda value, _: _compact(value)))
        bits.xaxis.set_minor_formatter(NullFormatter())
        bits.set_xlabel("network parameters")
        bits.set_ylabel("bits per parameter")
        code_length.set_yscale("log")
        code_length.set_ylabel("code length K (bits)")
        # Above the panel: "best" cannot see the twin axis' line and would cover it.
        bits.legend(
            handles=lines,
            loc="lower center",
            bbox_to_anchor=(0.5, 1.0),
            ncol=2,
            frameon=False,
        )
        bits.grid(True, which="major", alpha=0.3)

        figure.savefig(path, format=path.suffix.lower().lstrip("."), dpi=dpi)
    return figure
