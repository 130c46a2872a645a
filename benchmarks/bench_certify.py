"""Wall time of certification on MNIST-1D (n = 60 000) for models of 10⁴, 10⁵, 10⁶ parameters,
in one run on the same machine: "before" (the exhaustive search over the former
16-configuration default grid), "screened" (the screened search over that same grid) and
"after" (the screened search over today's 40-configuration default grid).

Each model is a `bounds.models.architectures.mnist1d_cnn` of the width that gives the size,
trained for `--epochs` (AdamW, step size 0.003; training is not timed), saved as a state dict
and certified through the calls the CLI makes (`cli.specs.load_model`, `load_data`,
`bounds.pipeline.certify.certify`) once per setting (`bounds.pipeline.search`). Reported per
setting: full-training-set evaluations (the float
model's, the candidates', and the decoded model's when it is not the chosen candidate's),
the search stage's seconds (compress every candidate and evaluate), total seconds, K and the
headline bound; then the ratios of "before" to each of the others. The MNIST-1D arrays are generated
once before timing.

Run: python benchmarks/bench_certify.py [--sizes 10000,100000,1000000] [--epochs 1]
     [--qat-epochs 0]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from bounds.models.architectures import mnist1d_cnn
from bounds.models.training import train_classifier
from bounds.pipeline.certify import certify
from bounds.tasks.classification.data import MNIST1DSpec, mnist1d_arrays
from cli.specs import load_data, load_model
from quantize import product_grid

WIDTH_FOR_SIZE = {10_000: 32, 100_000: 120, 1_000_000: 400}
FORMER_GRID = product_grid(levels=(4, 8, 16, 32), schemes=("kmeans", "uniform"))
#: (grid, search rule): None is today's default grid.
SETTINGS = {
    "before": (FORMER_GRID, "exhaustive"),
    "screened": (FORMER_GRID, "screened"),
    "after": (None, "screened"),
}


def full_evaluations(cert) -> int:
    """Evaluations over the whole training set: float model, candidates, decoded model."""
    decoded = 1 if "evaluation" in cert.timings else 0  # 0: the chosen candidate's was reused
    return 1 + cert.search["full_evaluations"] + decoded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--qat-epochs", type=int, default=0)
    args = parser.parse_args()
    mnist1d_arrays(MNIST1DSpec())  # generate (or read from the cache) before timing
    print(f"torch threads: {torch.get_num_threads()}; load average: {os.getloadavg()}")
    print(
        "params     setting     full evals  search s  total s  K bits   bound   | "
        "evals ratio  search speed-up  total speed-up"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        width = WIDTH_FOR_SIZE[size]
        arch = f"bounds.models.architectures:mnist1d_cnn:width={width}"
        torch.manual_seed(0)
        trained = mnist1d_cnn(width)
        train_classifier(
            trained, load_data("mnist1d"), epochs=args.epochs, lr=0.003, seed=0, quiet=True
        )
        rows = {}
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.pt"
            torch.save(trained.state_dict(), path)
            for setting, (grid, rule) in SETTINGS.items():
                start = time.perf_counter()
                loaded = load_model(str(path), arch)
                cert = certify(
                    loaded.model,
                    load_data("mnist1d"),
                    qat_epochs=args.qat_epochs,
                    qat_lr=0.003,
                    architecture=arch,
                    grid=grid,
                    search=rule,
                    quiet=True,
                )
                rows[setting] = (cert, time.perf_counter() - start)
        for setting in SETTINGS:
            cert, total = rows[setting]
            print(
                f"{cert.model_params:<10} {setting:<11} {full_evaluations(cert):>10}  "
                f"{cert.timings['search']:8.1f}  {total:7.1f}  {cert.code_bits:<7}  "
                f"{cert.best.value:.4f}",
                end="",
            )
            if setting != "before":
                (slow, slow_total), (fast, fast_total) = rows["before"], rows[setting]
                print(
                    f"  | {full_evaluations(slow) / full_evaluations(fast):11.2f}  "
                    f"{slow.timings['search'] / fast.timings['search']:15.2f}  "
                    f"{slow_total / fast_total:14.2f}"
                )
            else:
                print()


if __name__ == "__main__":
    main()
