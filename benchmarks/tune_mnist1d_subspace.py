"""Which subspace CNN settings give a tight Occam bound on MNIST-1D (n = 60 000, δ = 0.05)?

For each setting (CNN width, subspace dimension d, projection, learning rate, epochs, batch
size, seed) this trains ``Subspace(mnist1d_cnn(width), d, seed)`` with
:func:`bounds.models.training.train_classifier` (AdamW, cosine schedule), then codes w with
:func:`quantize.compress` at 4, 8, 16 and 32 levels of both schemes, decodes the word, counts
the decoded model's training errors k and reports K (bits of the code word), the quantized
train and test errors, and the Occam bounds

    binomial: R ≤ Bin⁻¹(n, k, ln δ − K ln 2)         (Langford 2005, Thm 4.1)
    kl:       R ≤ kl⁻¹(k/n, (K ln 2 + ln(1/δ))/n).

The "+qat" rows are the codes of ``--qat`` after the example's quantization-aware fine-tuning
(``finetune_quantized`` of examples/mnist1d_subspace.py: ``--qat-epochs`` epochs of
:func:`quantize.finetune`, cosine-decayed from ``--qat-lr``). Every row is a separate
hypothesis at its own δ: the rows tune the example's defaults, which are then fixed before
the example runs. ``bounds compute`` pays for its own choice among its grid (⌈log₂ 16⌉ = 4
bits by default).

Run (a few minutes per setting; torch is pinned to --threads threads because the machine's
two cores are shared and oversubscribed threads slow tiny convolutions down tenfold):

    cd /work/main && PYTHONPATH=. python benchmarks/tune_mnist1d_subspace.py
    PYTHONPATH=. python benchmarks/tune_mnist1d_subspace.py \
        --setting dim=1500,lr=0.05 --qat uniform:16,kmeans:16

Recorded results: benchmarks/results/mnist1d_subspace.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

import bounds
import quantize
from bounds.models.architectures import mnist1d_cnn
from bounds.models.training import train_classifier
from bounds.tasks.classification.data import MNIST1DSpec, mnist1d
from bounds.tasks.classification.evaluate import evaluate
from examples.mnist1d_subspace import finetune_quantized

DELTA = 0.05
HEADER = (
    "| code                       |      K | q train | q test | binomial | kl     |\n"
    "|----------------------------|--------|---------|--------|----------|--------|"
)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One training run; the defaults are those of examples/mnist1d_subspace.py."""

    width: int = 24
    dim: int = 2000
    projection: str = "auto"
    lr: float = 0.05
    epochs: int = 20
    batch: int = 384
    weight_decay: float = 0.0
    seed: int = 0

    @classmethod
    def parse(cls, text: str) -> Setting:
        """'width=32,dim=1000,...' → Setting (unnamed fields keep their defaults)."""
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        values = {}
        for item in filter(None, text.split(",")):
            key, _, value = item.partition("=")
            if key not in types:
                raise argparse.ArgumentTypeError(f"unknown field {key!r}; fields: {list(types)}")
            values[key] = {"int": int, "float": float, "str": str}[types[key]](value)
        return cls(**values)

    def label(self) -> str:
        return ",".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))


#: The example's defaults; the other settings of the results file are run with --setting.
DEFAULT_SETTINGS = (Setting(),)
DEFAULT_QAT = (("uniform", 12), ("uniform", 8), ("kmeans", 12))
LEVELS = (4, 8, 16, 32)
SCHEMES = ("kmeans", "uniform")


def _qat_list(text: str) -> list[tuple[str, int]]:
    """'uniform:12,kmeans:8' → [("uniform", 12), ("kmeans", 8)]."""
    pairs = []
    for item in filter(None, text.split(",")):
        scheme, _, levels = item.partition(":")
        if scheme not in SCHEMES or not levels.isdigit():
            raise argparse.ArgumentTypeError(f"expected scheme:levels, got {item!r}")
        pairs.append((scheme, int(levels)))
    return pairs


def _row(name: str, code: quantize.Code, subspace, train, test) -> dict:
    subspace.load_coded_state(code.decode())
    on_train, on_test = evaluate(subspace, train), evaluate(subspace, test)
    binomial, kl = (
        bounds.occam_bound(on_train.n, code.bits, DELTA, errors=on_train.errors, method=m).value
        for m in ("binomial", "kl")
    )
    return {
        "code": name,
        "K": code.bits,
        "train": on_train.error_rate,
        "test": on_test.error_rate,
        "binomial": binomial,
        "kl": kl,
    }


def measure(
    setting: Setting, train, test, qat: list[tuple[str, int]], qat_epochs: int, qat_lr: float
) -> list[dict]:
    """Train one setting; rows for every (scheme, levels) code and every fine-tuned one."""
    torch.manual_seed(setting.seed)
    subspace = quantize.Subspace(
        mnist1d_cnn(setting.width), setting.dim, seed=setting.seed, projection=setting.projection
    )
    start = time.perf_counter()
    losses = train_classifier(
        subspace,
        train,
        epochs=setting.epochs,
        lr=setting.lr,
        batch_size=setting.batch,
        weight_decay=setting.weight_decay,
        seed=setting.seed,
    )
    seconds = time.perf_counter() - start
    trained = subspace.w.detach().clone()
    on_train, on_test = evaluate(subspace, train), evaluate(subspace, test)
    print(
        f"\n{setting.label()}: D={subspace.num_params}, projection={subspace.projection}, "
        f"trained in {seconds:.0f} s, final loss {losses[-1]:.3f}, "
        f"float train error {on_train.error_rate:.4f}, test error {on_test.error_rate:.4f}, "
        f"|w| = {trained.norm():.2f}",
        flush=True,
    )
    print(HEADER, flush=True)
    rows = []
    for scheme in SCHEMES:
        for levels in LEVELS:
            with torch.no_grad():
                subspace.w.copy_(trained)
            code = quantize.compress(subspace, levels=levels, scheme=scheme)
            rows.append(_row(f"{scheme} {levels}", code, subspace, train, test))
            print(_format(rows[-1]), flush=True)
    for scheme, levels in qat:
        with torch.no_grad():
            subspace.w.copy_(trained)
        start = time.perf_counter()
        code = finetune_quantized(
            subspace,
            train,
            levels=levels,
            scheme=scheme,
            epochs=qat_epochs,
            lr=qat_lr,
            batch_size=setting.batch,
            seed=setting.seed,
        )
        name = f"{scheme} {levels} +qat {qat_epochs} ({time.perf_counter() - start:.0f} s)"
        rows.append(_row(name, code, subspace, train, test))
        print(_format(rows[-1]), flush=True)
    for row in rows:
        row.update(setting=setting.label(), seconds=seconds, float_train=on_train.error_rate)
    return rows


def _format(row: dict) -> str:
    return (
        f"| {row['code']:<26} | {row['K']:>6} | {row['train']:.4f}  | {row['test']:.4f} "
        f"| {row['binomial']:.4f}   | {row['kl']:.4f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", action="append", type=Setting.parse, help="e.g. dim=2000")
    parser.add_argument(
        "--qat",
        type=_qat_list,
        default=DEFAULT_QAT,
        help="codes to fine-tune, e.g. uniform:12,kmeans:12 ('' for none)",
    )
    parser.add_argument("--qat-epochs", type=int, default=10)
    parser.add_argument("--qat-lr", type=float, default=0.003)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = MNIST1DSpec(n=60000, m=10000, seed=0)
    train, test = mnist1d(spec, "train"), mnist1d(spec, "test")
    print(f"MNIST-1D n={len(train)}, m={len(test)}, δ={DELTA}, threads={args.threads}")
    best = []
    for setting in args.setting or DEFAULT_SETTINGS:
        rows = measure(setting, train, test, args.qat, args.qat_epochs, args.qat_lr)
        best.append(min(rows, key=lambda row: row["binomial"]))
    print("\nbest code per setting:")
    for row in best:
        print(f"{row['setting']} ({row['seconds']:.0f} s): {_format(row)}")


if __name__ == "__main__":
    main()
