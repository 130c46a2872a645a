"""Tests for quantize.subspace: θ = θ0 + P·w with regenerated projections P."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from quantize.subspace import DENSE_MAX_ENTRIES, Subspace, kronecker_shapes

REPO = Path(__file__).resolve().parents[1]
KINDS = ("dense", "chunked", "kronecker")


class SmallNet(nn.Module):
    """A net with a BatchNorm (float and integer buffers) and a float64 parameter."""

    def __init__(self, hidden: int = 12) -> None:
        super().__init__()
        self.inp = nn.Linear(5, hidden)
        self.norm = nn.BatchNorm1d(hidden)
        self.out = nn.Linear(hidden, 3)
        self.scale = nn.Parameter(torch.ones(3, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.norm(self.inp(x)))) * self.scale.float()


def make_net(seed: int = 0, hidden: int = 12) -> SmallNet:
    torch.manual_seed(seed)
    return SmallNet(hidden)


def inputs(seed: int = 1) -> torch.Tensor:
    return torch.randn(16, 5, generator=torch.Generator().manual_seed(seed))


def materialise(subspace: Subspace) -> torch.Tensor:
    """P as a D×d matrix, by applying the projection to the basis vectors."""
    with torch.no_grad():
        return torch.stack([subspace.projector(e) for e in torch.eye(subspace.dim)], dim=1)


def set_w(subspace: Subspace, seed: int = 2) -> None:
    with torch.no_grad():
        subspace.w.copy_(torch.randn(subspace.dim, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("kind", KINDS)
def test_forward_equals_wrapped_model_at_w_zero(kind: str) -> None:
    model = make_net().eval()
    x = inputs()
    expected = model(x)
    subspace = Subspace(model, 20, seed=4, projection=kind)
    assert torch.equal(subspace(x), expected)
    assert subspace.num_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_projection_is_the_materialised_matrix(kind: str) -> None:
    subspace = Subspace(make_net(hidden=40), 37, seed=5, projection=kind)
    matrix = materialise(subspace)
    assert matrix.shape == (subspace.num_params, 37)
    w = torch.randn(37, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        projected = subspace.projector(w)
    torch.testing.assert_close(projected, torch.mv(matrix, w), rtol=1e-5, atol=1e-6)
    # Entries have variance 1/D, so columns have expected squared norm 1.
    column_norms = matrix.square().sum(dim=0)
    assert abs(column_norms.mean().item() - 1.0) < 0.15


def test_dense_and_chunked_share_p_and_kronecker_is_a_kronecker_product() -> None:
    dense = Subspace(make_net(), 9, seed=8, projection="dense")
    chunked = Subspace(make_net(), 9, seed=8, projection="chunked")
    kronecker = Subspace(make_net(), 9, seed=8, projection="kronecker")
    assert torch.equal(materialise(dense), materialise(chunked))
    assert torch.equal(dense.projector.matrix, materialise(dense))
    num_rows = kronecker.num_params
    (rows_a, cols_a), (rows_b, cols_b) = kronecker_shapes(num_rows, 9)
    assert rows_a * rows_b >= num_rows and cols_a * cols_b >= 9
    factor_a, factor_b = kronecker.projector.factor_a, kronecker.projector.factor_b
    explicit = torch.kron(factor_a, factor_b)[:num_rows, :9]
    torch.testing.assert_close(materialise(kronecker), explicit, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_p_and_function_other_seed_differs(kind: str) -> None:
    x = inputs()
    first = Subspace(make_net().eval(), 15, seed=21, projection=kind)
    second = Subspace(make_net().eval(), 15, seed=21, projection=kind)
    other = Subspace(make_net().eval(), 15, seed=22, projection=kind)
    for subspace in (first, second, other):
        set_w(subspace)
    assert torch.equal(materialise(first), materialise(second))
    assert torch.equal(first(x), second(x))
    assert first.projection_digest() == second.projection_digest()
    assert not torch.equal(materialise(first), materialise(other))
    assert not torch.allclose(first(x), other(x))
    assert first.projection_digest() != other.projection_digest()


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_reaches_w_only(kind: str) -> None:
    model = make_net()
    subspace = Subspace(model, 11, seed=1, projection=kind)
    assert [p for p in subspace.parameters() if p.requires_grad] == [subspace.w]
    subspace(inputs()).square().mean().backward()
    assert subspace.w.grad is not None and subspace.w.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_chunked_gradient_equals_dense_gradient() -> None:
    # Same P (shared generator), so the custom backward must reproduce autograd through mv.
    grads = []
    for kind in ("dense", "chunked"):
        subspace = Subspace(make_net().eval(), 13, seed=6, projection=kind)
        set_w(subspace)
        subspace(inputs()).square().mean().backward()
        grads.append(subspace.w.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_auto_choice_and_dense_limit() -> None:
    model = make_net()
    num_params = sum(p.numel() for p in model.parameters())
    largest_dense = DENSE_MAX_ENTRIES // num_params
    assert Subspace(make_net(), 10, seed=0).projection == "dense"
    assert Subspace(make_net(), largest_dense + 1, seed=0).projection == "kronecker"
    with pytest.raises(ValueError, match="dense projection needs"):
        Subspace(make_net(), largest_dense + 1, seed=0, projection="dense")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 0, "seed": 0}, "dim"),
        ({"dim": 3, "seed": -1}, "seed"),
        ({"dim": 3.0, "seed": 0}, "dim"),
        ({"dim": 3, "seed": 0, "projection": "sparse"}, "projection"),
        ({"dim": 3, "seed": 0, "metadata": {"x": object()}}, "JSON"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Subspace(make_net(), **kwargs)


def test_coded_state_roundtrip_carries_w_and_buffers() -> None:
    base = make_net()
    trained = Subspace(copy.deepcopy(base), 8, seed=3)
    set_w(trained)
    trained(inputs(5))  # train-mode forward updates the BatchNorm running statistics
    state = trained.coded_state()
    assert list(state) == [
        "w",
        "model.norm.running_mean",
        "model.norm.running_var",
        "model.norm.num_batches_tracked",
    ]
    assert state["model.norm.num_batches_tracked"].item() == 1
    fresh = Subspace(copy.deepcopy(base), 8, seed=3)
    fresh.load_coded_state(state)
    trained.eval()
    fresh.eval()
    assert torch.equal(fresh(inputs()), trained(inputs()))
    prior = trained.prior()
    assert prior.layout() == [(name, tuple(t.shape), t.dtype) for name, t in state.items()]
    assert dict(prior.reference()) == {}


def test_load_coded_state_rejects_mismatches() -> None:
    subspace = Subspace(make_net(), 8, seed=3)
    state = subspace.coded_state()
    with pytest.raises(ValueError, match=r"missing keys \['model.norm.running_var'\]"):
        subspace.load_coded_state({k: v for k, v in state.items() if "running_var" not in k})
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        subspace.load_coded_state({**state, "extra": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"w: expected shape \[8\] torch.float32, got \[9\]"):
        subspace.load_coded_state({**state, "w": torch.zeros(9)})


def test_effective_state_dict_is_the_decoded_plain_model() -> None:
    subspace = Subspace(make_net(), 10, seed=9, projection="kronecker")
    set_w(subspace)
    subspace.eval()
    plain = make_net(seed=77).eval()
    plain.load_state_dict(subspace.effective_state_dict())
    torch.testing.assert_close(plain(inputs()), subspace(inputs()), rtol=0, atol=0)
    assert plain.scale.dtype == torch.float64


def test_prior_fingerprint_is_stable_and_sensitive() -> None:
    def fingerprint(**changes) -> str:
        options = {"seed": 3, "dim": 8, "projection": "dense", "hidden": 12, "init": 0}
        options.update(changes)
        model = make_net(options["init"], options["hidden"])
        subspace = Subspace(model, options["dim"], options["seed"], options["projection"])
        return subspace.prior().fingerprint()

    reference = fingerprint()
    assert fingerprint() == reference
    variants = [
        fingerprint(seed=4),
        fingerprint(dim=9),
        fingerprint(projection="chunked"),
        fingerprint(hidden=13),
        fingerprint(init=1),
    ]
    assert reference not in variants and len(set(variants)) == len(variants)
    # Buffers and w are coded, not part of the prior.
    subspace = Subspace(make_net(), 8, 3, "dense")
    set_w(subspace)
    subspace(inputs())
    assert subspace.prior().fingerprint() == reference
    description = subspace.prior().describe()
    assert json.loads(json.dumps(description)) == description
    assert description["module"] == f"{SmallNet.__module__}.SmallNet"
    assert (description["projection"], description["seed"], description["dim"]) == ("dense", 3, 8)


def test_prior_fingerprint_is_stable_across_processes() -> None:
    script = """
import json, torch
from torch import nn
from quantize.subspace import Subspace
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
print(json.dumps([Subspace(model, 7, 11, kind).prior().fingerprint()
                  for kind in ("dense", "chunked", "kronecker")]))
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
    expected = [Subspace(model, 7, 11, kind).prior().fingerprint() for kind in KINDS]
    assert json.loads(result.stdout) == expected
    assert len(set(expected)) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_roundtrip_reproduces_outputs(kind: str, tmp_path: Path) -> None:
    metadata = {"architecture": "tests:make_net", "kwargs": {"hidden": 12}}
    subspace = Subspace(make_net(), 14, seed=17, projection=kind, metadata=metadata)
    set_w(subspace)
    subspace(inputs(3))
    subspace.eval()
    path = tmp_path / "subspace.pt"
    subspace.save(path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["format"] == "bounds.subspace/1"
    assert checkpoint["metadata"] == metadata
    assert checkpoint["projection"] == kind
    loaded = Subspace.load(path, make_net(seed=99))  # θ0 comes from the file
    loaded.eval()
    assert torch.equal(loaded(inputs()), subspace(inputs()))
    assert loaded.metadata == metadata
    assert loaded.prior().fingerprint() == subspace.prior().fingerprint()
    from_factory = Subspace.from_checkpoint(checkpoint, lambda: make_net(seed=5)).eval()
    assert torch.equal(from_factory(inputs()), subspace(inputs()))


def test_load_rejects_wrong_architecture_and_bad_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "subspace.pt"
    Subspace(make_net(), 6, seed=1).save(path)
    checkpoint = torch.load(path, weights_only=True)
    with pytest.raises(ValueError, match=r"inp.weight: expected shape \[13, 5\].*got \[12, 5\]"):
        Subspace.load(path, make_net(hidden=13))
    with pytest.raises(ValueError, match="checkpoint is for a .*SmallNet, got a .*Sequential"):
        Subspace.load(path, nn.Sequential(nn.Linear(5, 3)))

    class Wider(SmallNet):
        def __init__(self) -> None:
            super().__init__()
            self.extra = nn.Linear(2, 2)

    wider = Wider()
    wider.__class__ = SmallNet  # same class name, one layer more
    with pytest.raises(ValueError, match=r"missing keys \['extra.weight', 'extra.bias'\]"):
        Subspace.load(path, wider)
    with pytest.raises(ValueError, match="not a bounds.subspace/1 checkpoint"):
        Subspace.from_checkpoint({**checkpoint, "format": "other/1"}, make_net())
    with pytest.raises(ValueError, match=r"wrong type: \['seed'\]"):
        Subspace.from_checkpoint({**checkpoint, "seed": "1"}, make_net())
    with pytest.raises(ValueError, match="regenerated projection P differs"):
        Subspace.from_checkpoint({**checkpoint, "projection_digest": "0" * 64}, make_net())
    with pytest.raises(ValueError, match=r"w: expected shape \[6\]"):
        Subspace.from_checkpoint({**checkpoint, "w": torch.zeros(7)}, make_net())


@pytest.mark.parametrize("kind", KINDS)
def test_training_only_w_reduces_loss(kind: str) -> None:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    x = torch.randn(256, 8)
    with torch.no_grad():
        y = teacher(x)
    torch.manual_seed(1)
    student = Subspace(nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1)), 40, 2, kind)
    optimizer = torch.optim.Adam(student.parameters(), lr=0.05)
    losses = []
    for _ in range(150):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(student(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


MEMORY_SCRIPT = """
import json, sys, torch
from torch import nn
from quantize.subspace import Subspace

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

kind, width, height, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
warm = Subspace(nn.Linear(3, 4), 5, 1, kind)  # pay one-off allocations before measuring
warm(torch.randn(2, 3)).sum().backward()
model = nn.Sequential(nn.Linear(width, height), nn.ReLU(), nn.Linear(height, width))
model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
x = torch.randn(8, width)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
start = status("VmRSS:")
subspace = Subspace(model, dim, 0, kind)
with torch.no_grad():
    subspace.w.normal_()
subspace(x).square().mean().backward()
print(json.dumps({"num_params": subspace.num_params, "model_bytes": model_bytes,
                  "grad_norm": subspace.w.grad.norm().item(), "growth": status("VmHWM:") - start}))
"""


def run_memory_probe(kind: str, width: int, height: int, dim: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, kind, str(width), str(height), str(dim)],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def test_kronecker_memory_stays_bounded_for_ten_million_parameters() -> None:
    # D ≈ 10⁷, d = 10⁴: a dense P would hold 10¹¹ floats (400 GB).
    probe = run_memory_probe("kronecker", 1000, 5000, 10_000)
    assert probe["num_params"] >= 10**7
    assert probe["grad_norm"] > 0
    assert probe["growth"] < 10 * probe["model_bytes"]


def test_chunked_memory_stays_bounded_beyond_the_dense_limit() -> None:
    # D ≈ 2·10⁵, d = 10³: D·d = 2·10⁸ > 1e8; a dense P would take 800 MB.
    probe = run_memory_probe("chunked", 20, 5000, 1000)
    dense_bytes = probe["num_params"] * 1000 * 4
    assert probe["num_params"] * 1000 > DENSE_MAX_ENTRIES
    assert probe["grad_norm"] > 0
    assert probe["growth"] < dense_bytes / 10
