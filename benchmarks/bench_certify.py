"""Wall time of certification on MNIST-1D (n = 60 000) for models of 10⁴, 10⁵, 10⁶ parameters,
with the exhaustive search and with the screened search, in one run on the same machine.

Each model is a `bounds.models.architectures.mnist1d_cnn` of the width that gives the size,
trained for `--epochs` (AdamW, step size 0.003; training is not timed), saved as a state dict
and certified through the calls the CLI makes (`cli.specs.load_model`, `load_data`,
`bounds.pipeline.certify.certify`) with the default 16-configuration grid, once per search
rule (`bounds.pipeline.search`). Reported per rule: full-training-set evaluations (the float
model's, the candidates', and the decoded model's when it is not the chosen candidate's),
the search stage's seconds (compress every candidate and evaluate), total seconds, K and the
headline bound; then the ratios exhaustive / screened. The MNIST-1D arrays are generated
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

WIDTH_FOR_SIZE = {10_000: 32, 100_000: 120, 1_000_000: 400}
RULES = ("exhaustive", "screened")


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
        "params     rule        full evals  search s  total s  K bits   bound   | "
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
            for rule in RULES:
                start = time.perf_counter()
                loaded = load_model(str(path), arch)
                cert = certify(
                    loaded.model,
                    load_data("mnist1d"),
                    qat_epochs=args.qat_epochs,
                    qat_lr=0.003,
                    architecture=arch,
                    search=rule,
                    quiet=True,
                )
                rows[rule] = (cert, time.perf_counter() - start)
        for rule in RULES:
            cert, total = rows[rule]
            print(
                f"{cert.model_params:<10} {rule:<11} {full_evaluations(cert):>10}  "
                f"{cert.timings['search']:8.1f}  {total:7.1f}  {cert.code_bits:<7}  "
                f"{cert.best.value:.4f}",
                end="",
            )
            if rule == RULES[-1]:
                (slow, slow_total), (fast, fast_total) = rows["exhaustive"], rows["screened"]
                print(
                    f"  | {full_evaluations(slow) / full_evaluations(fast):11.2f}  "
                    f"{slow.timings['search'] / fast.timings['search']:15.2f}  "
                    f"{slow_total / fast_total:14.2f}"
                )
            else:
                print()


if __name__ == "__main__":
    main()
