"""Tests for quantize.priors: canonical fingerprints, reference and initialization priors."""

from __future__ import annotations

import functools
import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from quantize.priors import (
    InitPrior,
    NoPrior,
    Prior,
    ReferencePrior,
    describe_callable,
    fingerprint_state_dict,
    resolve_prior,
    state_layout,
)

REPO = Path(__file__).resolve().parents[1]


def small_state() -> dict[str, torch.Tensor]:
    return {
        "layer.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7,
        "layer.bias": torch.tensor([0.5, -1.25, 3.0], dtype=torch.float64),
        "bn.num_batches_tracked": torch.tensor(17, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
    }


def make_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))


def test_fingerprint_follows_documented_encoding() -> None:
    # An independent implementation of the encoding stated in the module docstring.
    def field(data: bytes) -> bytes:
        return struct.pack("<Q", len(data)) + data

    state = small_state()
    encoded = field(b"bounds.fingerprint/1") + field(b"state_dict") + field(b"4")
    for name in sorted(state):
        tensor = state[name]
        encoded += field(name.encode())
        encoded += field(str(tensor.dtype).encode())
        encoded += field(json.dumps(list(tensor.shape), separators=(",", ":")).encode())
        encoded += field(tensor.numpy().astype(tensor.numpy().dtype.newbyteorder("<")).tobytes())
    assert fingerprint_state_dict(state) == hashlib.sha256(encoded).hexdigest()


def test_fingerprint_ignores_insertion_order_and_views() -> None:
    state = small_state()
    reordered = dict(reversed(list(state.items())))
    transposed_back = dict(state, **{"layer.weight": state["layer.weight"].T.contiguous().T})
    assert not transposed_back["layer.weight"].is_contiguous()
    assert fingerprint_state_dict(reordered) == fingerprint_state_dict(state)
    assert fingerprint_state_dict(transposed_back) == fingerprint_state_dict(state)


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s["layer.weight"].view(-1)[5].add_(1e-6),
        lambda s: s.__setitem__("layer.weight", s["layer.weight"].reshape(4, 3)),
        lambda s: s.__setitem__("layer.bias", s["layer.bias"].float()),
        lambda s: s.__setitem__("renamed", s.pop("mask")),
        lambda s: s.pop("bn.num_batches_tracked"),
        lambda s: s["mask"].logical_not_(),
    ],
    ids=["one-weight", "shape", "dtype", "name", "removed", "bool-value"],
)
def test_fingerprint_is_sensitive(change) -> None:
    state = small_state()
    before = fingerprint_state_dict(state)
    change(state)
    assert fingerprint_state_dict(state) != before


def test_fingerprints_are_stable_across_processes() -> None:
    script = """
import json, torch
from torch import nn
import functools, sys
sys.path.insert(0, "tests")
from quantize.priors import InitPrior, NoPrior, ReferencePrior, fingerprint_state_dict
from test_quantize_priors import small_state
print(json.dumps([
    fingerprint_state_dict(small_state()),
    ReferencePrior(small_state(), name="base").fingerprint(),
    InitPrior(functools.partial(nn.Linear, 4, 3), seed=11).fingerprint(),
    NoPrior().fingerprint(),
]))
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    expected = [
        fingerprint_state_dict(small_state()),
        ReferencePrior(small_state(), name="base").fingerprint(),
        InitPrior(functools.partial(nn.Linear, 4, 3), seed=11).fingerprint(),
        NoPrior().fingerprint(),
    ]
    assert json.loads(result.stdout) == expected
    assert expected[0] == expected[1]  # a reference prior is named by its state dict's digest
    assert len(set(expected)) == 3


def test_reference_prior_is_a_frozen_copy() -> None:
    model = make_mlp()
    prior = ReferencePrior(model.state_dict(), name="base")
    fingerprint = prior.fingerprint()
    assert fingerprint == fingerprint_state_dict(model.state_dict())
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert prior.fingerprint() == fingerprint
    assert not torch.equal(prior.reference()["0.weight"], model[0].weight)
    assert isinstance(prior, Prior)


def test_reference_prior_detects_in_place_edits_of_its_tensors() -> None:
    prior = ReferencePrior(small_state())
    before = prior.fingerprint()
    prior.reference()["layer.weight"].mul_(2)
    assert prior.fingerprint() != before


def test_reference_prior_reference_layout_and_description() -> None:
    state = small_state()
    prior = ReferencePrior(state, name="my-base")
    assert sorted(prior.reference()) == ["layer.bias", "layer.weight"]
    assert prior.layout() == state_layout(state)
    assert prior.layout()[0] == ("layer.weight", (3, 4), torch.float32)
    description = prior.describe()
    assert json.loads(json.dumps(description)) == description
    assert description["kind"] == "reference"
    assert description["name"] == "my-base"
    assert description["num_elements"] == 12 + 3 + 1 + 3
    assert description["fingerprint"] == prior.fingerprint()


def test_init_prior_reproduces_factory_initialization() -> None:
    torch.manual_seed(123)
    expected = make_mlp().state_dict()
    prior = InitPrior(make_mlp, seed=123)
    reference = prior.reference()
    assert sorted(reference) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(reference[name], tensor)
    assert InitPrior(make_mlp, seed=123).fingerprint() == prior.fingerprint()
    assert InitPrior(make_mlp, seed=124).fingerprint() != prior.fingerprint()


def test_init_prior_leaves_global_rng_untouched() -> None:
    torch.manual_seed(7)
    state_before = torch.get_rng_state()
    InitPrior(make_mlp, seed=99)
    assert torch.equal(torch.get_rng_state(), state_before)
    after = torch.randn(5)
    torch.manual_seed(7)
    assert torch.equal(after, torch.randn(5))


def test_init_prior_fingerprint_covers_seed_and_factory() -> None:
    def other_factory() -> nn.Module:
        return make_mlp()

    prior = InitPrior(make_mlp, seed=3)
    same_tensors = InitPrior(other_factory, seed=3)
    for name, tensor in prior.reference().items():
        assert torch.equal(same_tensors.reference()[name], tensor)
    assert same_tensors.fingerprint() != prior.fingerprint()
    assert ReferencePrior(prior.reference()).fingerprint() != prior.fingerprint()
    description = prior.describe()
    assert description["kind"] == "init"
    assert description["seed"] == 3
    assert description["factory"] == f"{make_mlp.__module__}:make_mlp"
    assert json.loads(json.dumps(description)) == description


def test_init_prior_accepts_factories_returning_state_dicts() -> None:
    prior = InitPrior(lambda: {"w": torch.randn(4)}, seed=5)
    torch.manual_seed(5)
    assert torch.equal(prior.reference()["w"], torch.randn(4))


def test_describe_callable_names_partials_without_object_ids() -> None:
    text = describe_callable(functools.partial(nn.Linear, 3, out_features=4, bias=object()))
    assert text == (
        "partial(torch.nn.modules.linear:Linear, 3, bias=<builtins.object>, out_features=4)"
    )


def test_no_prior() -> None:
    prior = resolve_prior(None)
    assert isinstance(prior, NoPrior)
    assert dict(prior.reference()) == {}
    assert prior.layout() is None
    assert prior.fingerprint() == NoPrior().fingerprint()
    assert prior.describe() == {"kind": "none", "fingerprint": prior.fingerprint()}
    reference = ReferencePrior(small_state())
    assert resolve_prior(reference) is reference


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ReferencePrior({"w": [1.0, 2.0]}), "offending keys: \\['w'\\]"),
        (lambda: ReferencePrior([torch.zeros(2)]), "expected a mapping"),
        (lambda: fingerprint_state_dict({"s": torch.eye(2).to_sparse()}), "layout"),
        (lambda: InitPrior(make_mlp, seed=-1), "seed"),
        (lambda: InitPrior(make_mlp, seed=True), "seed"),
        (lambda: InitPrior("make_mlp", seed=1), "callable"),
        (lambda: resolve_prior(object()), "not a prior"),
    ],
)
def test_bad_input_raises_value_error(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()
