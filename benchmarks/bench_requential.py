"""Requential codes on MNIST-1D: encode and decode time, K and bits per label, per student width.

One teacher, `mnist1d_cnn(--teacher-width)` trained with `bounds.models.training.train_classifier`
(AdamW, cosine schedule, no weight decay, batch 256, seed 0) on the training split of --data, is
described by students `mnist1d_cnn(width)` for every width of --widths. For each student, the
prior is the one `bounds compute TEACHER --code requential --student-arch ... --labels ...` builds
(`cli.specs.Requential.family`: the default pool, MNIST-1D inputs drawn with the training seed
+ 1, as many as the largest label count; the default schedule; student and shared seeds 0), so
its grid is --labels and each word carries ⌈log₂ G⌉ bits of grid index. For every label count N
the script times `quantize.requential.encode` (the teacher labels N pool inputs, the student is
trained from them) and `RequentialCode.from_bytes` (the decoder re-trains the student from the
word alone; it checks the checksum, so the decoded student is the encoded one bit for bit), and
reports K (the exact word length), K / N (bits per label), the fraction of labels that were the
student's own selection, the decoded student's error on the training and test splits, and the
binomial Occam bound Bin⁻¹(n, k, ln δ − K ln 2) on the training split (each row its own claim at
δ; the rows of one width together at G δ). Torch runs on one thread (the codec sets it anyway).

Run: PYTHONPATH=. python benchmarks/bench_requential.py [--widths 4,8,16,32,64]
     [--labels 1000,2000,4000] [--variant requential] [--teacher-width 32]
     [--teacher-epochs 30] [--data mnist1d:n=10000,m=2000,seed=0]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from bounds import occam_bound
from bounds.models.architectures import mnist1d_cnn
from bounds.models.training import train_classifier
from cli.specs import Requential, load_data
from quantize.requential import RequentialCode, encode

ARCH = "bounds.models.architectures:mnist1d_cnn:width={}"


def tensors(spec: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of a data spec's split (a TensorDataset, as MNIST-1D specs give)."""
    inputs, labels = load_data(spec, default_split=split).tensors
    return inputs, labels


def errors(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> int:
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(batch).argmax(dim=1) for batch in inputs.split(4096)])
    return int((predicted != labels).sum())


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="4,8,16,32,64", help="student widths")
    parser.add_argument("--labels", default="1000,2000,4000", help="label counts N (the grid)")
    parser.add_argument("--variant", default="requential", choices=("requential", "prequential"))
    parser.add_argument("--teacher-width", type=int, default=32)
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--teacher-lr", type=float, default=0.01)
    parser.add_argument("--data", default="mnist1d:n=10000,m=2000,seed=0")
    parser.add_argument("--delta", type=float, default=0.05)
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    counts = tuple(int(n) for n in args.labels.split(","))
    torch.set_num_threads(1)

    start = time.perf_counter()
    train_x, train_y = tensors(args.data, "train")
    test_x, test_y = tensors(args.data, "test")
    data_seconds = time.perf_counter() - start
    torch.manual_seed(0)
    teacher = mnist1d_cnn(width=args.teacher_width)
    start = time.perf_counter()
    train_classifier(
        teacher, (train_x, train_y), epochs=args.teacher_epochs, lr=args.teacher_lr, seed=0
    )
    teacher_seconds = time.perf_counter() - start
    teacher.eval()
    n, m = len(train_y), len(test_y)
    print(f"data {args.data}: n = {n}, m = {m} ({data_seconds:.1f} s to load or generate)")
    print(
        f"teacher mnist1d_cnn(width={args.teacher_width}): {parameters(teacher)} parameters, "
        f"{args.teacher_epochs} epochs at lr {args.teacher_lr} in {teacher_seconds:.1f} s; "
        f"train error {errors(teacher, train_x, train_y) / n:.4f}, "
        f"test error {errors(teacher, test_x, test_y) / m:.4f}"
    )
    print(f"variant {args.variant}, label grid {counts}, δ = {args.delta}, torch threads 1")
    print()
    print(
        "| width | params | N | K bits | bits/label | own | encode s | decode s "
        "| train err | test err | binomial |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    options = Requential(args.variant, None, counts, 0, 0)
    total = time.perf_counter()
    for width in widths:
        family = options.family(teacher, ARCH.format(width), args.data)
        prior = family.prior
        for index, count in enumerate(counts):
            start = time.perf_counter()
            code = encode(teacher, prior, index)
            encode_seconds = time.perf_counter() - start
            word = code.to_bytes()
            start = time.perf_counter()
            decoded = RequentialCode.from_bytes(word, prior)
            decode_seconds = time.perf_counter() - start
            student = decoded.student
            for name, tensor in code.student.state_dict().items():
                assert torch.equal(tensor, student.state_dict()[name]), name
            train_errors = errors(student, train_x, train_y)
            bound = occam_bound(n, code.bits, args.delta, errors=train_errors).value
            print(
                f"| {width} | {parameters(student)} | {count} | {code.bits} "
                f"| {code.bits / count:.3f} | {code.agreements / count:.3f} "
                f"| {encode_seconds:.1f} | {decode_seconds:.1f} | {train_errors / n:.4f} "
                f"| {errors(student, test_x, test_y) / m:.4f} | {bound:.4f} |",
                flush=True,
            )
    print()
    load = os.getloadavg()
    print(
        f"students: {time.perf_counter() - total:.0f} s in total; load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


if __name__ == "__main__":
    main()
