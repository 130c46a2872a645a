"""Distributed evaluation: sharded batches, exact all-reduce, and torchrun against one process."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import distributed_worker as worker
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from bounds.pipeline import distributed
from bounds.tasks.classification.evaluate import BatchEvaluation, evaluate, evaluate_batches

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_worker.py")
TIMEOUT = 240


@pytest.fixture(scope="module")
def runs(small_model, tmp_path_factory):
    """The worker once alone and once as 2 torchrun ranks (gloo), side by side."""
    single, launched = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("torchrun")
    # One thread everywhere (the worker sets it too); torchrun would otherwise print a notice.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                "--nproc_per_node", "2"]  # fmt: skip
    processes = [
        subprocess.Popen(
            [*prefix, str(WORKER), str(small_model), str(out)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, so a hang can be ended whole
        )
        for prefix, out in (([sys.executable], single), (torchrun, launched))
    ]
    try:
        for process in processes:
            _, stderr = process.communicate(timeout=TIMEOUT)
            assert process.returncode == 0, stderr[-4000:]
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    return single, launched


def read(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


@pytest.mark.slow
def test_two_ranks_certify_exactly_like_one_process(runs):
    single, launched = (read(folder, "certificate.json") for folder in runs)
    assert single["world"] == 1 and launched["world"] == 2
    # Same errors and bit-identical float64 loss sums (compared as hex).
    assert launched["float_evaluation"] == single["float_evaluation"]
    assert single["float_evaluation"]["n"] == 1500
    one, two = single["certificate"], launched["certificate"]
    assert two["task"] == one["task"]
    assert one["task"]["settings"]["batch_size"] == worker.BATCH_SIZE  # what reproduce uses
    assert two["train"] == one["train"]
    assert two["train"]["decoded"]["errors"] < 1500 * 0.9  # a trained model, not chance
    assert two["code"] == one["code"]  # bits, breakdown, configuration, sha256
    assert two["candidates"] == one["candidates"]
    assert set(one["bounds"]) == {"error"} and len(one["bounds"]["error"]) >= 1

    def values(certificate: dict) -> list:
        return [
            (loss, method, bound["value"])
            for loss, by_method in certificate["bounds"].items()
            for method, bound in by_method.items()
        ]

    assert values(two) == values(one)
    assert two["test"] == one["test"]
    assert two["qat"] == one["qat"] == {"epochs": worker.QAT_EPOCHS, "lr": 1e-4}
    # `reproduce` (behind `bounds verify`) under torchrun confirms the certificate.
    assert launched["reproduction"] == {
        "errors": one["train"]["decoded"]["errors"],
        "code_sha256": one["code"]["sha256"],
        "mismatches": [],
    }


@pytest.mark.slow
def test_two_ranks_certify_a_language_model_exactly_like_one_process(runs):
    single, launched = (read(folder, "certificate.json")["language_model"] for folder in runs)
    one, two = single["certificate"], launched["certificate"]
    assert two["code"] == one["code"]  # bits, breakdown, configuration, sha256
    assert two["candidates"] == one["candidates"]
    assert [c["evaluated"] for c in one["candidates"]] == [True, True]
    assert two["train"] == one["train"] and two["test"] == one["test"]
    assert two["task"] == one["task"] and two["data"] == one["data"]
    assert one["data"]["scored_tokens"] == int(
        sum(float.fromhex(v) for v in single["per_document"]["tokens"])
    )
    for loss, by_method in one["bounds"].items():
        for method, bound in by_method.items():
            assert two["bounds"][loss][method] == bound, (loss, method)
    # Every per-document float64 sum of the decoded model, bit for bit.
    assert launched["per_document"] == single["per_document"]
    assert len(single["per_document"]["tokens"]) == 30
    assert launched["reproduction"] == {
        "code_sha256": one["code"]["sha256"],
        "mismatches": [],
    }


@pytest.mark.slow
def test_only_rank_zero_writes(runs):
    _, launched = runs
    assert sorted(path.name for path in launched.iterdir()) == ["certificate.json", "checks.json"]
    assert read(launched, "certificate.json")["written_by"] == 0
    assert read(launched, "checks.json")["written_by"] == 0


@pytest.mark.slow
def test_collectives_under_torchrun(runs):
    ranks = read(runs[1], "checks.json")["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert [r["shard"] for r in ranks] == [[0, 2], [1, 2]]
    assert [r["is_main"] for r in ranks] == [True, False]
    ints = worker.disjoint_int_values().tolist()
    floats = [value.hex() for value in worker.disjoint_float_values()]
    for checks in ranks:
        assert checks["initialized"] == [True, False]  # the second call changes nothing
        # Each rank contributed half the entries; every rank gets all of them, exactly.
        assert checks["ints"] == ints
        assert checks["floats"] == floats
        assert checks["broadcast"] == {"from": 0}
        assert checks["overlap"] == "sum_disjoint: 3 entries are nonzero on more than one rank"
        assert checks["float32"] == "sum_disjoint takes int64 or float64 arrays, got float32"
        assert "differ between rank 0 and rank(s) [1]" in checks["different_weights"]
    label_error = f"label 10 of example {worker.BAD_EXAMPLE} is out of range"
    # The bad label is in batch 1, which rank 1 evaluates; rank 0 reports rank 1's failure.
    assert ranks[1]["bad_label"].startswith(label_error)
    assert ranks[0]["bad_label"].startswith(f"rank 1 failed: ValueError: {label_error}")


@pytest.mark.slow
def test_language_model_ranks_that_disagree_or_fail_stop_together(runs):
    ranks = read(runs[1], "checks.json")["ranks"]
    # Checked before scoring, so both ranks stop with the same message naming what differs.
    differing = {
        "lm_different_weights": "the model weights",
        "lm_different_corpus": "the corpora (documents, tokens, sha256 of the ids)",
        "lm_different_settings": "the evaluation settings (context, stride, alphas, top_k, "
        "batch size)",
    }
    for case, what in differing.items():
        for checks in ranks:
            assert checks[case] == f"{what} differ between rank 0 and rank(s) [1]", case
    # Rank 1 fails (in the causality check; while scoring): it raises its own error, and
    # rank 0, instead of waiting for it in a collective, names it.
    failures = {
        "lm_not_causal": "the model is not causal: replacing the tokens after position",
        "lm_scoring_error": "the model returned a non-finite logit",
    }
    for case, message in failures.items():
        assert ranks[1][case].startswith(message), ranks[1][case]
        assert ranks[0][case].startswith(f"rank 1 failed: ValueError: {message}"), ranks[0][case]


class RecordingDataset(Dataset):
    """A dataset of tensors that records which examples were loaded."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        self.inputs, self.labels, self.loaded = inputs, labels, []

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        self.loaded.append(index)
        return self.inputs[index], self.labels[index]


@pytest.fixture(scope="module")
def linear_problem():
    """A seeded linear classifier on 1 003 random points (not a multiple of the batch size)."""
    generator = torch.Generator().manual_seed(5)
    inputs = torch.randn(1003, 7, generator=generator)
    labels = torch.randint(0, 4, (1003,), generator=generator)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        model = torch.nn.Linear(7, 4)
    return model, inputs, labels


def test_evaluate_counts_errors_and_sums_the_loss(linear_problem):
    model, inputs, labels = linear_problem
    result = evaluate(model, (inputs, labels), batch_size=100)
    errors, per_batch = 0, []
    with torch.no_grad():
        for start in range(0, 1003, 100):
            # Batch by batch as evaluate does: a float32 product may round by batch shape.
            logits = model(inputs[start : start + 100]).double()
            batch_labels = labels[start : start + 100]
            errors += int((logits.argmax(1) != batch_labels).sum())
            loss = torch.nn.functional.cross_entropy(logits, batch_labels, reduction="sum")
            per_batch.append(float(loss))
    assert result.n == 1003 and result.errors == errors
    assert result.loss_sum == math.fsum(per_batch)
    # Close to the mean cross-entropy of the whole set computed in one go.
    with torch.no_grad():
        mean = torch.nn.functional.cross_entropy(model(inputs).double(), labels)
    assert math.isclose(result.mean_loss, float(mean), rel_tol=1e-6)


def test_three_shards_sum_to_the_unsharded_result(linear_problem):
    model, inputs, labels = linear_problem
    whole = evaluate(model, (inputs, labels), batch_size=100)
    parts = []
    for rank in range(3):
        data = RecordingDataset(inputs, labels)
        part = evaluate_batches(model, data, batch_size=100, shard=(rank, 3))
        mine = [b for b in range(11) if b % 3 == rank]
        # Only the shard's batches are evaluated, and only their examples are loaded (a few
        # of them more than once: the check for random transforms loads them twice first).
        assert np.flatnonzero(part.examples).tolist() == mine
        assert sorted(set(data.loaded)) == [
            i for b in mine for i in range(b * 100, min(b * 100 + 100, 1003))
        ]
        parts.append(part)
    combined = BatchEvaluation(
        n=1003,
        examples=sum(p.examples for p in parts),
        errors=sum(p.errors for p in parts),
        loss_sums=sum(p.loss_sums for p in parts),
    )
    assert combined.examples.tolist() == [100] * 10 + [3]
    assert combined.total() == whole  # errors and the float64 loss sum, exactly


def test_a_shard_alone_is_not_a_result(linear_problem):
    model, inputs, labels = linear_problem
    with pytest.raises(ValueError, match="7 of 11 batches were not evaluated"):
        evaluate(model, (inputs, labels), batch_size=100, shard=(1, 3))
    with pytest.raises(ValueError, match="rank < world size"):
        evaluate(model, (inputs, labels), shard=(3, 3))


def test_a_shuffling_loader_is_split_like_its_dataset(linear_problem):
    model, inputs, labels = linear_problem
    data = TensorDataset(inputs, labels)
    shuffled = DataLoader(
        data, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    # A loader's dataset is evaluated in order, in batches of the evaluation batch size.
    whole = evaluate_batches(model, data, batch_size=100)
    parts = [evaluate_batches(model, shuffled, batch_size=100, shard=(r, 2)) for r in (0, 1)]
    assert (parts[0].examples + parts[1].examples).tolist() == whole.examples.tolist()
    assert (parts[0].loss_sums + parts[1].loss_sums).tolist() == whole.loss_sums.tolist()


def test_helpers_without_a_process_group(monkeypatch):
    assert not distributed.active()
    assert (distributed.rank(), distributed.world_size(), distributed.shard()) == (0, 1, None)
    assert distributed.is_main()
    values = np.array([1.5, -2.0])
    reduced = distributed.sum_disjoint(values)
    assert reduced.tolist() == [1.5, -2.0] and reduced is not values
    with pytest.raises(ValueError, match="int64 or float64"):
        distributed.sum_disjoint(np.array([1, 2], dtype=np.int32))
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    distributed.barrier()
    distributed.shutdown()
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="launch with `torchrun"):
        distributed.initialize("cpu")
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        distributed.initialize("meta")
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        distributed.initialize("cuda:1")


def test_run_checked_and_check_agreement_without_a_process_group():
    computed = []
    result = distributed.run_checked(lambda: 3, lambda value: computed.append(value) or {})
    assert result == 3 and computed == []  # nothing to agree with: not even computed
    distributed.check_agreement({"the model weights": "a"})  # one rank agrees with itself


def test_check_agreement_names_what_differs(monkeypatch):
    def two_ranks(mine: dict) -> dict:
        other = {**mine, "the corpora": "other"}
        monkeypatch.setattr(distributed, "_gather", lambda value: [value, other])
        return mine

    distributed.check_agreement(two_ranks({"the model weights": "w", "the corpora": "other"}))
    with pytest.raises(
        ValueError, match=r"^the corpora differ between rank 0 and rank\(s\) \[1\]$"
    ):
        distributed.check_agreement(two_ranks({"the model weights": "w", "the corpora": "c"}))
    monkeypatch.setattr(distributed, "_gather", lambda value: [value, {}, value])
    with pytest.raises(
        ValueError, match=r"^the a and the b differ between rank 0 and rank\(s\) \[1\]$"
    ):
        distributed.check_agreement({"the a": 1, "the b": 2})
