"""Benchmark at scale: a synthetic 10⁹-parameter checkpoint on disk.

Section ``compress``: writes a float32 safetensors checkpoint of ``--params`` parameters
(``--tensors`` weight matrices of ``--width`` columns, each with a bias vector; entries
N(0, 0.02²) from a seeded numpy Generator, produced and written chunk by chunk so that generation
itself stays small in memory) to a temporary directory, then codes it with
:func:`quantize.stream.compress_safetensors` (16-level k-means per tensor on a sample, exact
assignment, shortest coder) and deletes it. It prints the generation and compression times, the
process's peak resident memory, bits per parameter, and per tensor the ratio of the payload to
n·H (the symbols' number times their empirical entropy).

Peak memory of compression: writing "5" to /proc/self/clear_refs resets the kernel's high-water
mark VmHWM to the current RSS (the baseline) just before compressing; VmHWM afterwards is the
peak RSS of the process during compression, and its excess over the baseline is compared with
the budget 2 × the largest tensor + 2 × the code word (the returned Code holds the word and its
parsed payloads). ru_maxrss is the peak over the whole run, generation included. The checkpoint
has just been written, so compression's reads are likely served from the page cache (which is
not part of the process's RSS). Targets at 10⁹ parameters: under 5 minutes, peak RSS under 3 GiB.

Run: ``PYTHONPATH=. python benchmarks/bench_scale.py --section compress --params 1e9``
(timings grow when other jobs share the two cores; the load average is printed).

Section ``throughput``: evaluation throughput of a GPT-2-shaped model (GPT-2 small's config:
124M parameters, random weights from a seed, built with `bounds.models.hf.causal_lm`; needs
transformers) on ``--documents`` synthetic documents of random ids, ``--context`` tokens of
context, scoring every token with the α grid and top-1
(`bounds.tasks.language.evaluate.evaluate_lm`): one process with 2 threads, one with 1 thread,
and two torchrun processes with 1 thread each (gloo, the sums combined with
`bounds.pipeline.distributed.sum_disjoint`). It prints tokens per second
and a sha256 of the per-window sums, which must agree across the three runs.
Run: ``PYTHONPATH=. python benchmarks/bench_scale.py --section throughput --documents 8``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from memory import reset_peak, status_kib  # benchmarks/memory.py, next to this script

from quantize.stream import DEFAULT_SAMPLE_SIZE, TensorStats, compress_safetensors

WEIGHT_STD = 0.02
GENERATION_CHUNK = 1 << 22  # values per generated and written block
FREE_SPACE_MARGIN = 1 << 30


# --- measurement ---------------------------------------------------------------------------------


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.0f} MiB"


# --- the synthetic checkpoint --------------------------------------------------------------------


def synthetic_shapes(params: int, tensors: int, width: int) -> dict[str, tuple[int, ...]]:
    """``tensors`` weight matrices (rows × width) and their bias vectors, ≈ ``params`` in all."""
    rows = max(1, round(params / (tensors * width)))
    shapes: dict[str, tuple[int, ...]] = {}
    for index in range(tensors):
        shapes[f"blocks.{index:03d}.weight"] = (rows, width)
        shapes[f"blocks.{index:03d}.bias"] = (width,)
    return shapes


def write_synthetic_checkpoint(path: Path, shapes: dict[str, tuple[int, ...]], seed: int) -> None:
    """A float32 safetensors file of N(0, WEIGHT_STD²) entries, written block by block."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        nbytes = 4 * int(np.prod(shape, dtype=np.int64))
        header[name] = {
            "dtype": "F32",
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    generator = np.random.default_rng(seed)
    block = np.empty(GENERATION_CHUNK, dtype=np.float32)
    with open(path, "wb") as file:
        file.write(len(text).to_bytes(8, "little") + text)
        for shape in shapes.values():
            remaining = int(np.prod(shape, dtype=np.int64))
            while remaining:
                values = block[: min(remaining, GENERATION_CHUNK)]
                generator.standard_normal(out=values, dtype=np.float32)
                values *= np.float32(WEIGHT_STD)
                file.write(values.astype("<f4", copy=False).tobytes())
                remaining -= values.shape[0]


# --- sections ------------------------------------------------------------------------------------


def run_compress(args: argparse.Namespace) -> None:
    params = int(float(args.params))
    shapes = synthetic_shapes(params, args.tensors, args.width)
    num_params = sum(int(np.prod(shape, dtype=np.int64)) for shape in shapes.values())
    file_bytes = 4 * num_params
    free = shutil.disk_usage(args.dir).free
    if free < file_bytes + FREE_SPACE_MARGIN:
        raise SystemExit(
            f"{args.dir} has {_gib(free)} free; the checkpoint needs {_gib(file_bytes)}"
        )
    print("=== section compress")
    print(f"parameters            {num_params:,} float32 in {len(shapes)} tensors")
    print(f"file size             {_gib(file_bytes)}")
    print(f"load average          {_load()} (1, 5, 15 min) at the start")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench_scale_") as folder:
        path = Path(folder) / "model.safetensors"
        start = time.perf_counter()
        write_synthetic_checkpoint(path, shapes, args.seed)
        generate_seconds = time.perf_counter() - start
        print(f"generation            {generate_seconds:.1f} s (written to {folder})")

        def report(done: int, total: int, stats: TensorStats) -> None:
            if args.verbose:
                print(f"  [{done}/{total}] {stats.name} {stats.coder} {stats.seconds:.1f} s")

        reset_peak()
        baseline = status_kib("VmRSS") * 1024
        start, cpu_start = time.perf_counter(), time.process_time()
        result = compress_safetensors(
            path, levels=args.levels, sample_size=args.sample_size, seed=args.seed, progress=report
        )
        compress_seconds = time.perf_counter() - start
        compress_cpu_seconds = time.process_time() - cpu_start
        peak = status_kib("VmHWM") * 1024
    code, tensors = result.code, result.tensors
    largest = 4 * max(stats.numel for stats in tensors)
    word_bytes = len(code.to_bytes())
    budget = 2 * largest + 2 * word_bytes
    coders = sorted({stats.coder for stats in tensors})
    print(f"compression           {compress_seconds:.1f} s (target < 300 s at 10⁹)")
    print(f"  CPU time            {compress_cpu_seconds:.1f} s (the process, all threads)")
    print(f"throughput            {num_params / compress_seconds / 1e6:.1f} M params/s")
    print(f"peak RSS, compression {_gib(peak)} (VmHWM; target < 3 GiB at 10⁹)")
    print(f"  baseline RSS        {_mib(baseline)} before compressing")
    print(
        f"  peak extra          {_mib(peak - baseline)}; budget 2 × largest tensor "
        f"({_mib(largest)}) + 2 × word ({_mib(word_bytes)}) = {_mib(budget)}"
    )
    print(
        f"peak RSS, whole run   {_gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}"
    )
    print(f"code length           {code.bits:,} bits = {code.bits_per_param:.4f} bits/param")
    print(f"breakdown             {code.breakdown}")
    print(f"coders chosen         {coders}")
    for label, chosen in (
        ("≥ 10⁶ values", [s for s in tensors if s.numel >= 10**6]),
        ("< 10⁶ values", [s for s in tensors if s.numel < 10**6]),
    ):
        ratios = [s.payload_bits / s.entropy_bits for s in chosen if s.entropy_bits > 0]
        if ratios:
            print(
                f"payload / (n·H)       min {min(ratios):.6f}, median "
                f"{statistics.median(ratios):.6f}, max {max(ratios):.6f} over the "
                f"{len(ratios)} tensors of {label}"
            )
    print(f"load average          {_load()} (1, 5, 15 min) at the end")


# --- evaluation throughput of a GPT-2-shaped model -----------------------------------------------


def _gpt2_small(seed: int):
    """GPT-2 small's shape (12 layers, 12 heads, width 768, 50 257 ids, 1 024 positions; 124M
    parameters with tied embeddings), random weights from `seed`, built from its config."""
    from bounds.models.hf import causal_lm

    return causal_lm("gpt2", seed=seed)


def run_throughput(args: argparse.Namespace) -> None:
    """One process (2 threads, then 1) against two torchrun processes (1 thread each)."""
    import subprocess
    import sys

    from bounds.tasks.language.tokens import save_tokens

    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        tokens = Path(folder) / "tokens.npy"
        lengths = rng.integers(args.context // 2, 2 * args.context, size=args.documents)
        offsets = save_tokens(tokens, [rng.integers(0, 50257, size=int(n)) for n in lengths])
        worker = [__file__, "--section", "throughput-worker", "--tokens", str(tokens),
                  "--offsets", str(offsets), "--context", str(args.context),
                  "--alphas", args.alphas, "--batch", str(args.batch)]  # fmt: skip
        runs = {
            "1 process, 2 threads": [sys.executable, *worker, "--threads", "2"],
            "1 process, 1 thread": [sys.executable, *worker, "--threads", "1"],
            "2 processes (torchrun), 1 thread each": [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                "2",
                *worker,
                "--threads",
                "1",
                "--distributed",
            ],  # fmt: skip
        }
        results = {}
        for name, command in runs.items():
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[name] = json.loads(output.strip().splitlines()[-1])
    first = next(iter(results.values()))
    print(f"GPT-2-shaped model: {first['params']:,} parameters; {first['tokens']:,} scored "
          f"tokens in {args.documents} documents, context {args.context}, "
          f"{len(first['alphas'])} α values, top-1")  # fmt: skip
    for name, result in results.items():
        print(f"{name:40s} {result['seconds']:8.1f} s  {result['tokens'] / result['seconds']:8.1f} "
              f"tokens/s  results sha256 {result['digest'][:16]}…")  # fmt: skip
    identical = len({result["digest"] for result in results.values()}) == 1
    print(f"per-window sums identical across the three runs: {identical}")
    print(f"load average          {_load()} (1, 5, 15 min) at the end")


def run_throughput_worker(args: argparse.Namespace) -> None:
    """Evaluate the model on the corpus (sharded under torchrun); rank 0 prints JSON."""
    import hashlib

    import torch

    from bounds.formulas.sequence import DEFAULT_ALPHA_GRID
    from bounds.pipeline import distributed
    from bounds.tasks.language.evaluate import evaluate_lm
    from bounds.tasks.language.tokens import load_tokens

    torch.set_num_threads(args.threads)
    if args.distributed:
        distributed.initialize("cpu")
    model = _gpt2_small(0)
    corpus = load_tokens(args.tokens, offsets=args.offsets)
    alphas = (
        DEFAULT_ALPHA_GRID
        if args.alphas == "default"
        else [float(a) for a in args.alphas.split(",")]
    )
    shard = distributed.shard()
    distributed.barrier()
    start = time.perf_counter()
    evaluation = evaluate_lm(
        model,
        corpus,
        context=args.context,
        stride=args.context,
        alphas=alphas,
        top_k=(1,),
        batch_size=args.batch,
        shard=shard,
    )
    if shard is not None:
        summed = {k: distributed.sum_disjoint(v) for k, v in evaluation.arrays().items()}
        evaluation = evaluation.with_arrays(summed)
    distributed.barrier()
    seconds = time.perf_counter() - start
    digest = hashlib.sha256()
    for name, array in evaluation.arrays().items():
        digest.update(name.encode() + np.ascontiguousarray(array).tobytes())
    if distributed.is_main():
        print(json.dumps({
            "params": sum(p.numel() for p in model.parameters()),
            "tokens": int(evaluation.tokens.sum()),
            "seconds": seconds,
            "alphas": list(alphas),
            "digest": digest.hexdigest(),
        }))  # fmt: skip


SECTIONS: dict[str, Callable[[argparse.Namespace], None]] = {
    "compress": run_compress,
    "throughput": run_throughput,
}
# Launched by the throughput section (one process, or each torchrun rank); not run by default.
WORKERS: dict[str, Callable[[argparse.Namespace], None]] = {
    "throughput-worker": run_throughput_worker,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--section",
        action="append",
        choices=sorted(SECTIONS | WORKERS),
        help="section to run (repeatable; default: every section)",
    )
    parser.add_argument("--params", default="1e9", help="parameters of the checkpoint (1e9)")
    parser.add_argument("--tensors", type=int, default=16, help="weight matrices (16)")
    parser.add_argument("--width", type=int, default=4000, help="columns per matrix (4000)")
    parser.add_argument("--levels", type=int, default=16)
    parser.add_argument("--sample-size", type=int, default=DEFAULT_SAMPLE_SIZE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to write the file")
    parser.add_argument("--verbose", action="store_true", help="print a line per tensor")
    parser.add_argument("--documents", type=int, default=24, help="throughput: documents (24)")
    parser.add_argument("--context", type=int, default=1024, help="throughput: context (1024)")
    parser.add_argument("--alphas", default="default", help="throughput: α grid (default 10)")
    parser.add_argument("--batch", type=int, default=1, help="throughput: windows per batch")
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--tokens", help=argparse.SUPPRESS)
    parser.add_argument("--offsets", help=argparse.SUPPRESS)
    parser.add_argument("--distributed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for section in args.section or list(SECTIONS):
        (SECTIONS | WORKERS)[section](args)


if __name__ == "__main__":
    main()
