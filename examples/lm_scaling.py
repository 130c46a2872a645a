"""Bounds versus width for byte-level language models: requential and parameter codes.

One teacher, a byte-level causal transformer, is trained on the training split of the built-in
standard-library corpus (`bounds.tasks.language.stdlib`). Students of several widths are then
certified twice on that same training corpus:

- requential code (`quantize.requential_lm`): the student is re-trained by the decoder from
  the teacher's coded tokens on sequences the student generates itself, so K does not grow
  with the student's size;
- parameter code (today's default): a model of the same width trained on the corpus, its
  weights quantized and entropy-coded (`bounds.certify_lm`'s default grid), so K grows with
  the parameter count.

Every certificate is made at δ / (2 · widths), so the whole table is one claim at δ. The
script prints one Markdown table (params, K, train and held-out bits per byte, token-level
bits bound, top-1 bound, for each code) and writes `results.json` and `bounds.png`.

    python examples/lm_scaling.py --out lm-scaling                 # the README's table
    python examples/lm_scaling.py --out quick --widths 8,16 --teacher-steps 20 --steps 20 \\
        --sequences 16 --max-file-bytes 600 --context 16           # a smoke test, seconds
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
from bounds.pipeline.codes import RequentialCodes
from bounds.pipeline.decoder import Architecture
from bounds.tasks.language.stdlib import END_OF_DOCUMENT, VOCAB_SIZE, stdlib_corpus
from quantize.requential import Schedule
from quantize.requential_lm import SequencePrior

ARCHITECTURE = "bounds.models.architectures:byte_transformer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("lm-scaling"))
    parser.add_argument("--widths", default="16,32,64,128", help="student widths")
    parser.add_argument("--teacher-width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--context", type=int, default=64, help="also the generated length")
    parser.add_argument("--teacher-steps", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=2000, help="parameter-code models' steps")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--sequences", type=int, default=1024, help="generated sequences N")
    parser.add_argument("--student-lr", type=float, default=3e-3)
    parser.add_argument("--final-epochs", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=64, help="sequences generated together")
    parser.add_argument("--steps-per-chunk", type=int, default=64)
    parser.add_argument("--max-file-bytes", type=int, default=4096)
    parser.add_argument("--delta", type=float, default=0.05)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    widths = [int(w) for w in args.widths.split(",")]
    delta = args.delta / (2 * len(widths))
    train = stdlib_corpus("train", max_file_bytes=args.max_file_bytes)
    held_out = stdlib_corpus("test", max_file_bytes=args.max_file_bytes)
    print(f"training corpus: {train.source}: {train.scored_tokens:,} scored bytes")

    def options(width: int) -> dict[str, int]:
        return {"context": args.context, "width": width, "depth": args.depth, "heads": 4}

    def spec(width: int) -> str:
        return f"{ARCHITECTURE}:" + ",".join(f"{k}={v}" for k, v in options(width).items())

    models: dict[tuple[int, int], torch.nn.Module] = {}

    def trained(width: int, steps: int) -> torch.nn.Module:
        """A model of `width` trained on the corpus (the same seed and data order for every
        width, so a student as wide as the teacher is the teacher)."""
        if (width, steps) not in models:
            torch.manual_seed(0)
            model = byte_transformer(**options(width))
            train_language_model(
                model, train, context=args.context, steps=steps, lr=args.lr, quiet=args.quiet
            )
            models[width, steps] = model.eval()
        return models[width, steps]

    def certify(model: torch.nn.Module, **code) -> bounds.Certificate:
        return bounds.certify_lm(
            model,
            train,
            context=args.context,
            test_corpus=held_out,
            delta=delta,
            top_k=(1,),
            batch_size=64,
            quiet=args.quiet,
            **code,
        )

    teacher = trained(args.teacher_width, args.teacher_steps)
    torch.save(teacher.state_dict(), args.out / "teacher.pt")
    print(f"teacher (width {args.teacher_width}) trained: {time.perf_counter() - start:.0f} s")
    schedule = Schedule(
        chunk=args.chunk,
        steps_per_chunk=args.steps_per_chunk,
        batch_size=16,
        lr=args.student_lr,
        final_epochs=args.final_epochs,
        label_counts=(args.sequences,),
    )
    rows = []
    for width in widths:
        student = Architecture.from_spec(spec(width))
        prior = SequencePrior(
            student.build,
            student.fingerprint,
            student.spec,
            init_seed=0,
            schedule=schedule,
            seed=0,
            vocab_size=VOCAB_SIZE,
            sequence_length=args.context,
            start_token=END_OF_DOCUMENT,
        )
        began = time.perf_counter()
        requential = certify(teacher, code=RequentialCodes(prior))
        rows.append(_row("requential", width, requential, time.perf_counter() - began))
        (args.out / f"requential-{width}.json").write_text(requential.to_json() + "\n")
        (args.out / f"requential-{width}.code").write_bytes(requential.code.to_bytes())
        began = time.perf_counter()
        model = trained(width, args.steps)
        parameters = certify(model, architecture=spec(width))
        rows.append(_row("parameters", width, parameters, time.perf_counter() - began))
        (args.out / f"parameters-{width}.json").write_text(parameters.to_json() + "\n")
        if not args.quiet:
            print(f"width {width}: done at {time.perf_counter() - start:.0f} s")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    _plot(rows, args.out / "bounds.png", args.delta)
    print(_table(rows))
    print(
        f"all {len(rows)} bounds hold simultaneously with probability ≥ {1 - args.delta:g} "
        f"(each certified at δ = {delta:g}); total time {time.perf_counter() - start:.0f} s"
    )


def _row(code: str, width: int, certificate, seconds: float) -> dict:
    bits, top1 = certificate.bounds["bits"], certificate.bounds["top1"]
    test = certificate.test["summary"]
    return {
        "code": code,
        "width": width,
        "params": certificate.model_params,
        "code_bits": certificate.code_bits,
        "train_bits": certificate.train["decoded"]["bits"],
        "held_out_bits": test["bits"],
        "bits_bound": bits["token_bernstein"].value,
        "alpha": bits["token_bernstein"].terms["alpha"],
        "train_top1": certificate.train["decoded"]["top_k_error"]["1"],
        "held_out_top1": test["top_k_error"]["1"],
        "top1_bound": top1["token_bernstein"].value,
        "seconds": seconds,
    }


def _table(rows: list[dict]) -> str:
    lines = [
        "| code | width | params | K (bits) | train bits/byte | held-out bits/byte | "
        "bits bound | train top-1 | held-out top-1 | top-1 bound |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in sorted(rows, key=lambda row: (row["code"] != "requential", row["params"])):
        lines.append(
            f"| {row['code']} | {row['width']} | {row['params']:,} | {row['code_bits']:,} | "
            f"{row['train_bits']:.3f} | {row['held_out_bits']:.3f} | {row['bits_bound']:.3f} | "
            f"{row['train_top1']:.4f} | {row['held_out_top1']:.4f} | {row['top1_bound']:.4f} |"
        )
    lines.append("(bounds: token-level empirical Bernstein; bits: α-smoothed, best α of the grid)")
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path, delta: float) -> None:
    """Two panels over student parameters: the bits-per-byte bound with the train and
    held-out bits of each code, and K."""
    import matplotlib
    import matplotlib.ticker
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"font.size": 7, "lines.markersize": 3}):
        figure = Figure(figsize=(3.4, 4.2), layout="constrained")
        FigureCanvasAgg(figure)
        top, bottom = figure.subplots(2, 1, sharex=True)
        for code, color in (("requential", "C0"), ("parameters", "C1")):
            mine = sorted((row for row in rows if row["code"] == code), key=lambda r: r["params"])
            params = [row["params"] for row in mine]
            top.plot(
                params, [r["bits_bound"] for r in mine], "o-", color=color, label=f"{code}: bound"
            )
            top.plot(
                params, [r["train_bits"] for r in mine], "s:", color=color, label=f"{code}: train"
            )
            top.plot(params, [r["held_out_bits"] for r in mine], "d--", color=color, alpha=0.6,
                     label=f"{code}: held out")  # fmt: skip
            bottom.plot(params, [r["code_bits"] for r in mine], "o-", color=color, label=code)
        top.set_xscale("log")
        top.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # they overlap
        top.set_ylabel("bits per byte")
        top.set_title(f"byte-level LMs, bounds at δ = {delta:g} (simultaneous)")
        top.legend(fontsize=5, ncol=2)
        top.grid(True, alpha=0.3)
        bottom.set_yscale("log")
        bottom.set_ylabel("code length K (bits)")
        bottom.set_xlabel("student parameters")
        bottom.legend(fontsize=6)
        bottom.grid(True, alpha=0.3)
        figure.savefig(path, dpi=200)


if __name__ == "__main__":
    main()
