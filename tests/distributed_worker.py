"""Certify a small MNIST-1D model, in one process or as one rank of a torchrun launch.

Started by tests/test_distributed.py (this file is not a test module):

    python tests/distributed_worker.py MODEL OUT_DIR                 # one process
    torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py MODEL OUT_DIR

Writes OUT_DIR/certificate.json (the certificate, the float model's evaluation, and what
`reproduce` found; then the same for a tiny language model under `certify_lm`, with its decoded
model's per-document sums) and, when distributed, OUT_DIR/checks.json (each rank's results of the
collective helpers, and its messages when the ranks of `evaluate` or `certify_lm` disagree or one
of them fails). Only rank 0 writes, and it creates each file exclusively, so a second
writer would fail the run.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

BATCH_SIZE = 200  # 1 500 examples → 8 batches, the last one partial
SPEC = {"n": 1500, "m": 300, "seed": 3}
WIDTH = 6
GRID = [
    {"levels": levels, "scheme": "kmeans", "coder": "auto", "groups": "global"} for levels in (4, 8)
]
QAT_EPOCHS = 1
#: Example whose label the failure check puts out of range: in batch 1, so on rank 1 of 2.
BAD_EXAMPLE = 250
LM_VOCAB = 12
LM_CONTEXT, LM_STRIDE = 16, 8
LM_BATCH_SIZE = 4  # windows per batch: 23 batches, the last one partial
LM_TOP_K = (1, 3)
LM_GRID = [
    {"levels": 4, "scheme": "kmeans", "groups": "global", "precision": precision}
    for precision in ("float16", "float32")
]


def disjoint_int_values(size: int = 12) -> np.ndarray:
    """Entries needing all 64 bits (beyond float64's 53), both signs."""
    index = np.arange(size, dtype=np.int64)
    return np.where(index % 2 == 0, 2**62 + 12345 * index, -(2**61) - 7 * index - 1)


def disjoint_float_values(size: int = 12) -> np.ndarray:
    """Entries of every magnitude, including a subnormal and the largest finite float."""
    values = [math.pi, 0.1, 1e308, 5e-324, -2.5e-310, 1.0 + 2**-52, -1e-5, 123456789.123]
    return np.resize(np.array(values, dtype=np.float64), size)


def owned(size: int, rank: int, world: int) -> np.ndarray:
    return np.arange(size) % world == rank


def failure(work) -> str | None:
    """The message of the ValueError `work()` raises, or None if it succeeds."""
    try:
        work()
    except ValueError as error:
        return str(error)
    return None


def collective_checks(model, train) -> dict:
    """This rank's results of the collective helpers and of failures inside evaluate."""
    from bounds.pipeline import distributed
    from bounds.tasks.classification.evaluate import evaluate

    rank, world = distributed.rank(), distributed.world_size()
    ints, floats = disjoint_int_values(), disjoint_float_values()
    mine = owned(ints.size, rank, world)
    checks = {
        "rank": rank,
        "world": world,
        "shard": list(distributed.shard()),
        "is_main": distributed.is_main(),
        "ints": distributed.sum_disjoint(np.where(mine, ints, 0)).tolist(),
        "floats": [v.hex() for v in distributed.sum_disjoint(np.where(mine, floats, 0.0))],
        "broadcast": distributed.broadcast_object({"from": rank}),
    }
    checks["overlap"] = failure(lambda: distributed.sum_disjoint(np.ones(3)))
    checks["float32"] = failure(lambda: distributed.sum_disjoint(np.ones(3, dtype=np.float32)))
    inputs, labels = train.tensors
    bad_labels = labels.clone()
    bad_labels[BAD_EXAMPLE] = 10
    checks["bad_label"] = failure(
        lambda: evaluate(model, (inputs, bad_labels), batch_size=BATCH_SIZE)
    )
    other = mnist1d_model(None)
    if rank == 1:
        with torch.no_grad():
            other[-1].bias[0] += 1.0
    checks["different_weights"] = failure(lambda: evaluate(other, train, batch_size=BATCH_SIZE))
    return checks | language_model_failures(rank)


class OnRankOne(torch.nn.Module):
    """The same weights on every rank, but on rank 1 the logits pass through `fault`."""

    def __init__(self, base: torch.nn.Module, fault) -> None:
        super().__init__()
        self.base, self.fault = base, fault

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.base(ids)
        return self.fault(logits, ids) if torch.distributed.get_rank() == 1 else logits


def peek_at_next(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    following = torch.cat([ids[:, 1:], ids[:, -1:]], dim=1)
    return logits + torch.nn.functional.one_hot(following, logits.shape[-1])


def language_model_failures(rank: int) -> dict:
    """certify_lm's message on this rank when rank 1 holds other weights, another corpus or
    other settings, or fails (a non-causal model, NaN logits while scoring)."""
    from bounds.pipeline.certify import certify_lm

    train = lm_corpus(0, 30)

    def certify(model, corpus=train, batch_size=LM_BATCH_SIZE) -> str | None:
        options = dict(context=LM_CONTEXT, stride=LM_STRIDE, grid=LM_GRID[:1])
        return failure(lambda: certify_lm(model, corpus, batch_size=batch_size, **options))

    other = language_model()
    if rank == 1:
        with torch.no_grad():
            other.head.weight[0, 0] += 1e-3
    return {
        "lm_different_weights": certify(other),
        "lm_different_corpus": certify(language_model(), lm_corpus(rank, 30)),
        "lm_different_settings": certify(language_model(), batch_size=LM_BATCH_SIZE + rank),
        "lm_not_causal": certify(OnRankOne(language_model(), peek_at_next)),
        "lm_scoring_error": certify(OnRankOne(language_model(), lambda z, _: z * math.nan)),
    }


def mnist1d_model(path: str | None) -> torch.nn.Module:
    from bounds.models.architectures import mnist1d_cnn

    torch.manual_seed(0)
    model = mnist1d_cnn(width=WIDTH)
    if path is not None:
        model.load_state_dict(torch.load(path, weights_only=True))
    return model


def lm_corpus(seed: int, documents: int):
    """Documents of 3 to 59 random ids below LM_VOCAB."""
    from bounds.tasks.language.tokens import TokenCorpus

    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 60, size=documents)
    ends = np.cumsum(lengths)
    stream = rng.integers(0, LM_VOCAB, size=int(ends[-1])).astype(np.uint16)
    return TokenCorpus(stream, ends - lengths, ends, LM_VOCAB, f"random:{seed}")


def language_model() -> torch.nn.Module:
    from bounds.models.architectures import byte_transformer

    return byte_transformer(LM_VOCAB, context=LM_CONTEXT, width=16, depth=1, heads=2, seed=0)


def certify_language_model() -> dict:
    """certify_lm (with a held-out corpus) and reproduce of a tiny transformer, and the
    decoded model's per-document sums (float64 as hex) from the same sharded evaluation."""
    from bounds.pipeline.certify import certify_lm, reproduce
    from bounds.tasks.language.task import LanguageModelling
    from quantize import Code, NoPrior

    train, test = lm_corpus(0, 30), lm_corpus(1, 8)
    model = language_model()
    certificate = certify_lm(
        model,
        train,
        context=LM_CONTEXT,
        stride=LM_STRIDE,
        test_corpus=test,
        top_k=LM_TOP_K,
        grid=LM_GRID,
        batch_size=LM_BATCH_SIZE,
    )
    claim = json.loads(certificate.to_json())
    word = certificate.code.to_bytes()
    decoded = language_model()
    decoded.load_state_dict(Code.from_bytes(word, NoPrior()).decode(NoPrior()))
    task = LanguageModelling(
        context=LM_CONTEXT,
        stride=LM_STRIDE,
        alphas=tuple(certificate.task_settings["alphas"]),
        top_k=LM_TOP_K,
        batch_size=LM_BATCH_SIZE,
    )
    per_document = task.evaluate(decoded, train, "decoded model").per_document()
    sums = {
        name: [value.hex() for value in np.asarray(array, dtype=np.float64).ravel()]
        for name, array in per_document.arrays().items()
    }
    reproduction = reproduce(word, language_model(), train, certificate=claim)
    return {
        "certificate": claim,
        "per_document": sums,
        "reproduction": {
            "code_sha256": reproduction.code_sha256,
            "mismatches": reproduction.mismatches,
        },
    }


def write_once(path: Path, payload: dict) -> None:
    """Create `path` (failing if it exists, so two writers cannot both succeed)."""
    with path.open("x") as handle:
        json.dump(payload, handle, indent=1)


def main(model_path: str, out_dir: str) -> None:
    # Float32 kernels (convolutions, matrix products) split their work by thread count, and
    # a different split rounds differently; one thread in every process makes the per-batch
    # float64 loss sums of the single-process and the torchrun runs comparable bit for bit.
    torch.set_num_threads(1)
    from bounds import certify, reproduce
    from bounds.pipeline import distributed
    from bounds.tasks.classification.data import MNIST1DSpec, mnist1d
    from bounds.tasks.classification.evaluate import evaluate

    launched = "WORLD_SIZE" in os.environ
    initialized = []
    if launched:
        initialized = [distributed.initialize("cpu"), distributed.initialize("cpu")]
    spec = MNIST1DSpec(**SPEC)
    train, test = mnist1d(spec), mnist1d(spec, split="test")
    model = mnist1d_model(model_path)
    checks = {"initialized": initialized, **collective_checks(model, train)} if launched else None

    float_eval = evaluate(model, train, batch_size=BATCH_SIZE)
    certificate = certify(
        model,
        train,
        test_data=test,
        grid=GRID,
        qat_epochs=QAT_EPOCHS,
        batch_size=BATCH_SIZE,
        architecture=f"bounds.models.architectures:mnist1d_cnn:width={WIDTH}",
    )
    claim = json.loads(certificate.to_json())
    reproduction = reproduce(
        certificate.code.to_bytes(),
        mnist1d_model(None),
        train,
        certificate=claim,  # the task and its batch size come from the certificate
        architecture=f"bounds.models.architectures:mnist1d_cnn:width={WIDTH}",
    )
    language = certify_language_model()
    everyone = [checks]
    if launched:
        everyone = [None] * distributed.world_size()
        torch.distributed.all_gather_object(everyone, checks)
    if distributed.is_main():
        out = Path(out_dir)
        write_once(
            out / "certificate.json",
            {
                "written_by": distributed.rank(),
                "world": distributed.world_size(),
                "float_evaluation": {
                    "n": float_eval.n,
                    "errors": float_eval.errors,
                    "loss_sum": float_eval.loss_sum.hex(),
                },
                "certificate": claim,
                "reproduction": {
                    "errors": reproduction.summary["errors"],
                    "code_sha256": reproduction.code_sha256,
                    "mismatches": reproduction.mismatches,
                },
                "language_model": language,
            },
        )
        if launched:
            write_once(out / "checks.json", {"written_by": distributed.rank(), "ranks": everyone})
    distributed.barrier()
    distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
