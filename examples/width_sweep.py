"""Bounds versus width through the library API: train, certify, tabulate, plot.

The same pipeline as `bounds demo --parameters` (parameter codes of CNNs trained in one random
subspace), with its settings spelled out so you can change them:
CNN widths, the subspace dimension d shared by every width, epochs, the quantization
levels searched, and δ (split over the family so that all rows hold at once).

    python examples/width_sweep.py --out width-sweep --widths 8,16,32 --dim 1000 --n 20000

Writes checkpoints, code words, sweep.json/.md/.tex and bounds.png/.pdf into --out and
prints the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bounds.demo import ParameterSettings, run_parameter_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("width-sweep"))
    parser.add_argument("--widths", default="8,16,32,64")
    parser.add_argument("--dim", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--n", type=int, default=60000)
    parser.add_argument("--m", type=int, default=10000)
    parser.add_argument("--levels", default="4,8,16,32")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    settings = ParameterSettings(
        widths=tuple(int(w) for w in args.widths.split(",")),
        dim=args.dim,
        epochs=args.epochs,
        n=args.n,
        m=args.m,
        levels=tuple(int(level) for level in args.levels.split(",")),
    )
    result = run_parameter_demo(args.out, settings, quiet=args.quiet)
    print(result.claim)
    print(result.to_markdown())
    for row in result.rows:
        cert = row.certificate
        print(f"{row.name}: D = {cert.model_params:,}, K = {cert.code_bits} bits, "
              f"bound {cert.best.value:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
