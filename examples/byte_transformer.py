"""A byte-level transformer on the Python standard library's source, certified at two sizes.

The corpus ships with Python: every standard-library .py file of at most 16 KiB is a
document of bytes (plus an end-of-document id), split 90/10 into training and held-out files
by a seeded permutation, each split's files in that permutation's random order rather than by
path (`bounds.tasks.language.stdlib`). For each width the script trains a small causal
transformer for a fixed number of steps on CPU, saves its state dict, and certifies it with
`bounds.certify_lm`: bits per byte (α-smoothed, best α of the grid) and top-1 error, each
bounded at the token level (Azuma, empirical Bernstein) and the document level, plus held-out
values.

    python examples/byte_transformer.py --out byte-lm            # two widths, ~16 min on 2 cores
    python examples/byte_transformer.py --out byte-lm --widths 32 --steps 200 --max-file-bytes 2048

A certificate of the same model from the command line (its grid also tries global codebooks):

    bounds compute byte-lm/width-32.pt --task lm --arch \\
        bounds.models.architectures:byte_transformer:context=128,width=32,depth=2,heads=4 \\
        --data stdlib --test-data stdlib:split=test --context 128 --levels 16,32
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import bounds
from bounds.models.architectures import byte_transformer
from bounds.models.training import train_language_model
from bounds.tasks.language.stdlib import stdlib_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("byte-lm"))
    parser.add_argument("--widths", default="32,64")
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--max-file-bytes", type=int, default=16384)
    parser.add_argument("--levels", default="16,32")
    parser.add_argument("--groups", default="tensor", help="codebooks: tensor, global or both")
    parser.add_argument("--delta", type=float, default=0.05)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    train = stdlib_corpus("train", max_file_bytes=args.max_file_bytes)
    held_out = stdlib_corpus("test", max_file_bytes=args.max_file_bytes)
    print(f"training corpus: {train.source}: {train.scored_tokens:,} scored bytes")
    grid = [
        {"levels": int(levels), "groups": groups}
        for levels in args.levels.split(",")
        for groups in args.groups.split(",")
    ]
    rows = []
    for width in (int(w) for w in args.widths.split(",")):
        options = {"context": args.context, "width": width, "depth": args.depth, "heads": 4}
        torch.manual_seed(0)
        model = byte_transformer(**options)
        start = time.perf_counter()
        train_language_model(
            model, train, context=args.context, steps=args.steps, lr=args.lr, quiet=args.quiet
        )
        trained = time.perf_counter() - start
        torch.save(model.state_dict(), args.out / f"width-{width}.pt")
        certificate = bounds.certify_lm(
            model,
            train,
            context=args.context,
            test_corpus=held_out,
            delta=args.delta,
            grid=grid,
            top_k=(1,),
            architecture="bounds.models.architectures:byte_transformer:"
            + ",".join(f"{k}={v}" for k, v in options.items()),
            quiet=args.quiet,
        )
        certified = time.perf_counter() - start - trained
        (args.out / f"width-{width}.json").write_text(certificate.to_json() + "\n")
        (args.out / f"width-{width}.code").write_bytes(certificate.code.to_bytes())
        bits, top1 = certificate.bounds["bits"], certificate.bounds["top1"]
        test = certificate.test["summary"]
        rows.append(
            {
                "width": width,
                "params": certificate.model_params,
                "code_bits": certificate.code_bits,
                "train_bits": certificate.train["decoded"]["bits"],
                "held_out_bits": test["bits"],
                "bits_bound": {method: bound.value for method, bound in bits.items()},
                "alpha": bits["token_bernstein"].terms["alpha"],
                "train_top1": certificate.train["decoded"]["top_k_error"]["1"],
                "held_out_top1": test["top_k_error"]["1"],
                "top1_bound": {method: bound.value for method, bound in top1.items()},
                "train_seconds": trained,
                "certify_seconds": certified,
            }
        )
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(
        "| width | params | K (bits) | train bits/byte | held-out bits/byte | BPD bound "
        "(token Bernstein) | BPD bound (token Azuma) | train top-1 | held-out top-1 | "
        "top-1 bound (token Azuma) | top-1 bound (token Bernstein) |"
    )
    print("|--:" * 11 + "|")
    for row in rows:
        print(
            f"| {row['width']} | {row['params']:,} | {row['code_bits']:,} | "
            f"{row['train_bits']:.3f} | {row['held_out_bits']:.3f} | "
            f"{row['bits_bound']['token_bernstein']:.3f} | {row['bits_bound']['token_azuma']:.3f} "
            f"| {row['train_top1']:.4f} | {row['held_out_top1']:.4f} | "
            f"{row['top1_bound']['token_azuma']:.4f} | {row['top1_bound']['token_bernstein']:.4f} |"
        )
    print(f"each bound holds with probability ≥ {1 - args.delta:g}; each cell is its own claim")


if __name__ == "__main__":
    main()
