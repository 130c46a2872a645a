"""Does a richer default grid tighten bounds, at no more wall time than the exhaustive search
over today's grid? Measured on the checkpoints of `bounds demo --parameters` (CNNs of widths
8–128 in one random subspace, MNIST-1D n = 60 000) and, with `--model`, on any other
checkpoints (e.g. the model `examples/mnist1d_subspace.py` writes).

Grids: "today" = the classification default (4, 8, 16, 32 levels × k-means, uniform ×
global, per-tensor: 16 configurations, 4 index bits); "rich" = 3, 4, 6, 8, 12, 16, 24, 32,
48, 64 levels × the same (40 configurations, 6 index bits). Each model is certified three
times without fine-tuning: today's grid searched exhaustively (the old default), today's
grid screened, the rich grid screened. Reported: the binomial bound, K and seconds of each.

Run: python benchmarks/bench_grid.py [--folder bounds-demo-parameters] [--model FILE ...]
(the folder is made with `bounds demo --parameters --out FOLDER` when it is missing)
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from bounds.pipeline.certify import certify
from cli.specs import load_data, load_model
from quantize import product_grid

SCHEMES = ("kmeans", "uniform")
GRIDS = {
    "today": product_grid(levels=(4, 8, 16, 32), schemes=SCHEMES),
    "rich": product_grid(levels=(3, 4, 6, 8, 12, 16, 24, 32, 48, 64), schemes=SCHEMES),
}
RUNS = (("today", "exhaustive"), ("today", "screened"), ("rich", "screened"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("bounds-demo-parameters"))
    parser.add_argument("--model", type=Path, action="append", default=[])
    args = parser.parse_args()
    if not args.folder.is_dir():
        from bounds.demo import ParameterSettings, run_parameter_demo

        run_parameter_demo(args.folder, ParameterSettings(), quiet=True)
    models = sorted(args.folder.glob("width-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    models += args.model
    train = load_data("mnist1d")
    print(f"load average: {os.getloadavg()}")
    print("model            " + "  ".join(f"{g}/{r:<10} bound  K      s   " for g, r in RUNS))
    totals = dict.fromkeys(RUNS, 0.0)
    for path in models:
        cells = []
        for grid, rule in RUNS:
            loaded = load_model(str(path))
            start = time.perf_counter()
            cert = certify(
                loaded.model,
                train,
                grid=GRIDS[grid],
                search=rule,
                architecture=loaded.architecture,
                quiet=True,
            )
            seconds = time.perf_counter() - start
            totals[(grid, rule)] += seconds
            cells.append(f"{cert.best.value:.4f} {cert.code_bits:<6} {seconds:5.1f}")
        print(f"{path.name:<16} " + "   ".join(f"{' ' * 10}{cell}" for cell in cells))
    print("total seconds: " + ", ".join(f"{g}/{r} {s:.1f}" for (g, r), s in totals.items()))


if __name__ == "__main__":
    main()
