"""Wall time of `bounds compute` on MNIST-1D (n = 60 000) for models of 10⁴, 10⁵, 10⁶ parameters.

Each model is a `bounds.models.architectures.mnist1d_cnn` of the width that gives the size, at
its seeded initialization (training it is not what is timed), saved as a state dict and
certified through the same calls the CLI makes (`cli.specs.load_model`, `load_data`,
`bounds.pipeline.certify.certify`) with the default 16-configuration grid and one epoch of
quantization-aware fine-tuning. Stages: load (model file + data), float evaluation,
search (compress every candidate, evaluate those that can still win), QAT, evaluation of
the decoded word, bound. The MNIST-1D arrays are generated once before timing.

Run: python benchmarks/bench_certify.py [--qat-epochs 1] [--sizes 10000,100000,1000000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bounds.models.architectures import mnist1d_cnn
from bounds.pipeline.certify import certify
from bounds.tasks.classification.data import MNIST1DSpec, mnist1d_arrays
from cli.specs import load_data, load_model

WIDTH_FOR_SIZE = {10_000: 32, 100_000: 120, 1_000_000: 400}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    args = parser.parse_args()
    mnist1d_arrays(MNIST1DSpec())  # generate (or read from the cache) before timing
    print(f"torch threads: {torch.get_num_threads()}")
    header = "params    width  load   float  search  qat    eval   bound  total  K bits     bound"
    print(header)
    for size in (int(s) for s in args.sizes.split(",")):
        width = WIDTH_FOR_SIZE[size]
        with tempfile.TemporaryDirectory() as folder:
            torch.manual_seed(0)
            path = Path(folder) / "model.pt"
            torch.save(mnist1d_cnn(width).state_dict(), path)
            arch = f"bounds.models.architectures:mnist1d_cnn:width={width}"
            start = time.perf_counter()
            loaded = load_model(str(path), arch)
            train = load_data("mnist1d")
            load_seconds = time.perf_counter() - start
            cert = certify(
                loaded.model, train, qat_epochs=args.qat_epochs, architecture=arch, quiet=True
            )
            total = time.perf_counter() - start
        t = cert.timings
        print(
            f"{cert.num_params:<9} {width:<6} {load_seconds:5.1f}  {t['float_evaluation']:5.1f}"
            f"  {t['search']:6.1f}  {t.get('qat', 0.0):5.1f}  {t['evaluation']:5.1f}"
            f"  {t['bound']:5.2f}  {total:5.1f}  {cert.code_bits:<9}  {cert.best.value:.4f}"
        )


if __name__ == "__main__":
    main()
