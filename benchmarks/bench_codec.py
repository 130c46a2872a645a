"""Benchmark: compress and decode 10⁸ float32 parameters with 16-level k-means.

The model is four 5000×5000 float32 tensors (10⁸ parameters, 400 MB) with Gaussian entries of
different scales, coded once with one global codebook and once with one codebook per tensor.
The script times ``compress`` (k-means, assignment, range coder and zstd candidates, writing and
parsing the word) and ``Code.decode``, and reports bits per parameter and the ratio of the
payload bits to n·H: the symbols' number times their empirical entropy, summed over groups. The
range coder under the count table reaches n·H within rounding; zstd can go below it on the global
group because it adapts block by block to the tensors' different symbol frequencies, which one
global count table does not see.

Peak extra memory is measured with the kernel's resident-set high-water mark: after the model
tensors exist, writing "5" to /proc/self/clear_refs resets VmHWM to the current RSS (the
baseline); the VmHWM read from /proc/self/status after compress + decode, minus that baseline,
is the peak extra memory of the codec (it includes the decoded copy of the model). Target: under
60 s in total and under 3× the model's size.

Run: ``PYTHONPATH=. python benchmarks/bench_codec.py`` (timings grow if other jobs share the CPU).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from memory import reset_peak, status_kib  # benchmarks/memory.py, next to this script

from quantize import Code, compress

NUM_TENSORS = 4
SIDE = 5000
LEVELS = 16


def make_model(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        f"layer{i}.weight": torch.randn(SIDE, SIDE, generator=generator) * (0.02 * (i + 1))
        for i in range(NUM_TENSORS)
    }


def entropy_bits(counts: np.ndarray) -> float:
    """n·H of a count table, in bits (float64)."""
    counts = counts[counts > 0].astype(np.float64)
    return float(-(counts * np.log2(counts / counts.sum())).sum())


def symbol_counts(group, code: Code, decoded: dict[str, torch.Tensor]) -> np.ndarray:
    """The group's symbol counts: its count table, or recovered from the decoded values."""
    if group.model is not None and group.model.kind == "counts":
        return group.model.counts
    levels = group.codebook.astype(np.float32)  # float32 tensors decode to exactly these values
    counts = np.zeros(len(levels), dtype=np.int64)
    for index in group.members:
        values = decoded[code.layout[index].name].reshape(-1).numpy()
        for start in range(0, values.shape[0], 1 << 22):
            symbols = np.searchsorted(levels, values[start : start + (1 << 22)])
            counts += np.bincount(symbols, minlength=len(levels))
    return counts


def run(model: dict[str, torch.Tensor], groups: str) -> None:
    model_bytes = sum(t.numel() * t.element_size() for t in model.values())
    reset_peak()
    baseline_kib = status_kib("VmRSS")

    start = time.perf_counter()
    code = compress(model, levels=LEVELS, scheme="kmeans", coder="auto", groups=groups)
    compress_seconds = time.perf_counter() - start
    start = time.perf_counter()
    decoded = code.decode()
    decode_seconds = time.perf_counter() - start
    peak_extra = (status_kib("VmHWM") - baseline_kib) * 1024

    n_h = sum(entropy_bits(symbol_counts(group, code, decoded)) for group in code.groups)
    squared_error = sum(float(((decoded[k] - v).double() ** 2).sum()) for k, v in model.items())
    squared_norm = sum(float((v.double() ** 2).sum()) for v in model.values())
    coders = sorted({f"{g.coder}/{g.model.kind}" if g.model else g.coder for g in code.groups})
    same = Code.from_bytes(code.to_bytes()).bits == code.bits

    print(f"--- groups={groups!r}, {LEVELS}-level k-means, coder='auto'")
    print(f"compress              {compress_seconds:.1f} s")
    print(f"decode                {decode_seconds:.1f} s")
    print(f"total                 {compress_seconds + decode_seconds:.1f} s (target < 60 s)")
    print(
        f"peak extra memory     {peak_extra / 2**20:.0f} MiB = "
        f"{peak_extra / model_bytes:.2f} × model size (target < 3)"
    )
    print(f"code length           {code.bits:,} bits = {code.bits_per_param:.4f} bits/param")
    print(f"breakdown             {code.breakdown}")
    print(f"coders chosen         {coders}")
    print(f"payload / (n·H)       {code.breakdown['payload'] / n_h:.6f} (n·H = {n_h:,.0f} bits)")
    print(f"relative RMS error    {np.sqrt(squared_error / squared_norm):.4f}")
    print(f"re-parsed length same {same}")


def main() -> None:
    torch.set_num_threads(2)
    model = make_model()
    num_params = sum(t.numel() for t in model.values())
    print(f"parameters            {num_params:,} float32 in {NUM_TENSORS} tensors")
    for groups in ("global", "tensor"):
        run(model, groups)


if __name__ == "__main__":
    main()
