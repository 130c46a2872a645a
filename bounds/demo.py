"""The built-in demo: bounds versus model width on MNIST-1D, from data generation to plot.

A family of `mnist1d_cnn` models of growing width is trained in random subspaces of one
fixed dimension d (Li et al. 2018; Lotfi et al. 2022): the code describes the d subspace
coordinates, so K depends on d and the quantization, not on the width, while a wider
network may make the same d coordinates more expressive. Every model is certified after
a short quantization-aware fine-tuning, and the δ budget is split over the family so that
all rows hold simultaneously.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

ARCHITECTURE = "bounds.models.architectures:mnist1d_cnn"


@dataclass(frozen=True)
class DemoSettings:
    """Everything the demo fixes before it sees the data (all of it is part of the prior)."""

    widths: tuple[int, ...] = (8, 16, 32, 64, 128)
    dim: int = 1000
    epochs: int = 8
    lr_base: float = 0.05
    batch_size: int = 256
    n: int = 60000
    m: int = 10000
    data_seed: int = 0
    seed: int = 0
    levels: tuple[int, ...] = (4, 8, 16, 32)
    schemes: tuple[str, ...] = ("kmeans", "uniform")
    qat_epochs: int = 2
    qat_lr: float = 0.003
    delta: float = 0.05


QUICK = DemoSettings(
    widths=(4, 8, 16, 32, 64), dim=500, epochs=6, n=10000, m=2000, levels=(8, 16, 32), qat_epochs=1
)


def learning_rate(lr_base: float, network_parameters: int) -> float:
    """lr_base·√(D/1000) for a network of D parameters.

    Adam moves each coordinate of w by about its step size, and P's columns have unit norm,
    so each of the D network parameters moves by about lr·√(d/D); scaling the step size by
    √D keeps that per-parameter step the same across widths. (Training choices are not part
    of the prior: the code word describes whatever weights training produced.)
    """
    return lr_base * (network_parameters / 1000) ** 0.5


def run_demo(out: Path, settings: DemoSettings = DemoSettings(), *, quiet: bool = False):
    """Train, certify and report the width family; write every artefact into `out`.

    Files: `width-W.pt` (subspace checkpoints), `width-W.code` (code words), `sweep.json`,
    `sweep.md`, `sweep.tex`, `bounds.png`, `bounds.pdf`, `settings.json`.
    Returns the `SweepResult`.
    """
    import json

    import torch

    from bounds.models.architectures import mnist1d_cnn
    from bounds.models.training import train_classifier
    from bounds.pipeline.sweep import sweep
    from bounds.reports.plot import plot_sweep
    from bounds.tasks.classification.data import MNIST1DSpec, mnist1d
    from quantize import Subspace, product_grid

    out.mkdir(parents=True, exist_ok=True)
    spec = MNIST1DSpec(n=settings.n, m=settings.m, seed=settings.data_seed)
    train, test = mnist1d(spec, "train"), mnist1d(spec, "test")
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
    (out / "sweep.json").write_text(result.to_json() + "\n")
    (out / "sweep.md").write_text(result.to_markdown())
    (out / "sweep.tex").write_text(result.to_latex())
    (out / "settings.json").write_text(json.dumps(asdict(settings), indent=2) + "\n")
    for suffix in ("png", "pdf"):
        plot_sweep(result, out / f"bounds.{suffix}")
    return result


def settings_for(quick: bool, **overrides) -> DemoSettings:
    """The full or quick settings with any explicit overrides applied."""
    base = QUICK if quick else DemoSettings()
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
