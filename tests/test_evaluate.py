"""Evaluation sees each of a dataset's n examples exactly once, whatever loader it came in."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SMALL_ARCH, SMALL_DATA, run_cli
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)

from bounds.tasks.classification.evaluate import as_loader, evaluate, evaluate_batches

N = 203


@pytest.fixture(scope="module")
def problem():
    """A seeded linear classifier and N examples it gets partly wrong."""
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(5, 3)
    inputs = torch.randn(N, 5, generator=generator)
    labels = torch.randint(0, 3, (N,), generator=generator)
    return model, TensorDataset(inputs, labels)


class Noisy(Dataset):
    """A dataset with a random augmentation: fresh noise on every fetch."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        x, y = self.data[index]
        return x + 0.01 * torch.randn_like(x), y


class Stream(IterableDataset):
    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self):
        return iter(self.data)


def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1)


SAMPLED = {
    "shuffled": lambda data: DataLoader(data, batch_size=16, shuffle=True, generator=generator()),
    "subset": lambda data: DataLoader(
        data, batch_size=16, sampler=SubsetRandomSampler(range(0, N, 3), generator=generator())
    ),
    "with replacement": lambda data: DataLoader(
        data,
        batch_size=16,
        sampler=RandomSampler(data, replacement=True, num_samples=50, generator=generator()),
    ),
    "weighted": lambda data: DataLoader(
        data, batch_size=16, sampler=WeightedRandomSampler([1.0] * N, 2 * N, generator=generator())
    ),
    "batch sampler": lambda data: DataLoader(
        data, batch_sampler=BatchSampler(RandomSampler(data, generator=generator()), 7, False)
    ),
    "drop_last": lambda data: DataLoader(data, batch_size=64, drop_last=True),
}


@pytest.mark.parametrize("kind", SAMPLED)
def test_a_loader_is_evaluated_as_its_whole_dataset_in_order(problem, kind):
    model, data = problem
    # Same batches as the dataset's, so the float64 loss sum matches exactly, not just n.
    assert evaluate(model, SAMPLED[kind](data), batch_size=50) == evaluate(
        model, data, batch_size=50
    )


def test_the_evaluation_batch_size_replaces_the_loaders(problem):
    model, data = problem
    batches = evaluate_batches(model, DataLoader(data, batch_size=7), batch_size=100)
    assert batches.examples.tolist() == [100, 100, 3]


def test_a_loaders_collate_function_is_kept(problem):
    model, data = problem

    def collate(items):  # the dataset alone would not give (inputs, labels) batches
        inputs, labels = zip(*items, strict=True)
        return [torch.stack(inputs), torch.stack(labels)]

    pairs = [(x, y) for x, y in data]
    loader = DataLoader(pairs, batch_size=9, shuffle=True, collate_fn=collate)
    assert evaluate(model, loader) == evaluate(model, data)
    # Quantization-aware training takes the dataset of the same wrapping.
    assert as_loader(loader).dataset is pairs


def test_a_random_transform_is_refused(problem):
    model, data = problem
    for noisy in (Noisy(data), DataLoader(Noisy(data), batch_size=32, shuffle=True)):
        with pytest.raises(ValueError, match="remove the random augmentation for certification"):
            evaluate(model, noisy)


def test_a_random_collate_function_is_refused(problem):
    model, data = problem

    def mix(items):  # mixup-like: each batch mixed in a fresh random order
        inputs, labels = torch.utils.data.default_collate(items)
        return inputs[torch.randperm(len(inputs))], labels

    with pytest.raises(ValueError, match="loaded twice"):
        evaluate(model, DataLoader(data, batch_size=32, collate_fn=mix))


def test_deterministic_data_is_accepted_even_with_nan(problem):
    model, data = problem
    inputs, labels = data.tensors
    inputs = inputs.clone()
    inputs[0, 0] = float("nan")  # NaN ≠ NaN in value, but the bytes are the same
    assert evaluate(model, (inputs, labels)).n == N


def test_data_whose_order_cannot_be_fixed_is_refused(problem):
    model, data = problem
    cases = {
        "an IterableDataset yields": Stream(data),
        "a map-style Dataset": DataLoader(Stream(data), batch_size=8),
        "without automatic batching": DataLoader(data, batch_size=None),
    }
    for message, refused in cases.items():
        with pytest.raises(ValueError, match=message):
            evaluate(model, refused)


MODULE = """
import torch
from torch.utils.data import DataLoader, Dataset

from bounds.tasks.classification.data import MNIST1DSpec, mnist1d


class Noisy(Dataset):
    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        x, y = self.data[index]
        return x + 0.01 * torch.randn_like(x), y


def make(noisy=False):
    data = mnist1d(MNIST1DSpec(n=1500, m=300, seed=3))
    return DataLoader(Noisy(data) if noisy else data, batch_size=100, shuffle=True)
"""


@pytest.fixture()
def data_module(tmp_path, monkeypatch):
    """A `module:function` data spec in the working directory, as a user would write one."""
    (tmp_path / "evaluate_loaders_module.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "evaluate_loaders_module:make"


def test_cli_certifies_a_shuffling_loader_like_its_dataset(small_model, data_module, capsys):
    results = []
    for data in (SMALL_DATA, data_module):
        argv = ["compute", small_model, "--arch", SMALL_ARCH, "--data", data, "--levels", "8",
                "--format", "json", "-q"]  # fmt: skip
        status, out, err = run_cli(capsys, *argv)
        assert status == 0, err
        results.append(json.loads(out)["train"])
    assert results[0] == results[1]


def test_cli_refuses_a_loader_with_random_transforms(small_model, data_module, capsys):
    argv = ["compute", small_model, "--arch", SMALL_ARCH, "--data", f"{data_module}:noisy=True",
            "-q"]  # fmt: skip
    status, _, err = run_cli(capsys, *argv)
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "remove the random augmentation for certification" in err
    assert "Traceback" not in err
