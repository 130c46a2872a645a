"""Tests of quantization-aware fine-tuning."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional

from quantize import Code, ReferencePrior, compress, finetune

# Tiny models run fastest on one thread; several threads spin against each other.
pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(seed: int = 0):
    """A 3-class problem a small MLP fits well in full precision."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(512, 8, generator=generator)
    teacher = torch.randn(8, 3, generator=generator)
    targets = (inputs @ teacher + 0.3 * torch.randn(512, 3, generator=generator)).argmax(1)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        optimizer.zero_grad()
        functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    loader = [(inputs[i : i + 64], targets[i : i + 64]) for i in range(0, 512, 64)]
    return model, inputs, targets, loader


def _loss(model: torch.nn.Module, state, inputs, targets) -> float:
    model.load_state_dict(state)
    with torch.no_grad():
        return float(functional.cross_entropy(model(inputs), targets))


@pytest.mark.parametrize("groups", ["global", "tensor"])
def test_finetuning_recovers_what_coarse_quantization_lost(groups):
    model, inputs, targets, loader = _problem()
    full = _loss(model, model.state_dict(), inputs, targets)
    code = compress(model, levels=3, groups=groups, grid_index=2, grid_size=4)
    probe = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    before = _loss(probe, code.decode(), inputs, targets)
    assert before > full + 0.05  # three levels hurt: there is something to recover

    losses = []
    tuned = finetune(
        model, code, loader, epochs=15, lr=0.01, progress=lambda e, v: losses.append(v)
    )
    after = _loss(probe, tuned.decode(), inputs, targets)
    assert len(losses) == 15
    assert after < before - 0.5 * (before - full)
    assert tuned.config == code.config
    assert (tuned.grid_index, tuned.grid_size) == (2, 4)
    assert all(len(group.codebook) <= 3 for group in tuned.groups)
    again = Code.from_bytes(tuned.to_bytes()).decode()
    assert all(torch.equal(again[k], v) for k, v in tuned.decode().items())


def test_finetuning_codes_updated_buffers_and_accepts_a_parsed_code():
    model, inputs, targets, loader = _problem(1)
    model = torch.nn.Sequential(model[0], torch.nn.BatchNorm1d(32), model[1], model[2])
    model(inputs)
    code = Code.from_bytes(compress(model, levels=4).to_bytes())
    tuned = finetune(model, code, loader, epochs=2, lr=0.005)
    decoded = tuned.decode()
    assert decoded["1.num_batches_tracked"].item() == model[1].num_batches_tracked.item() > 1
    assert tuned.config["levels"] == 4 and tuned.config["scheme"] == "kmeans"
    model.load_state_dict(decoded)


def test_finetuning_keeps_coding_differences_from_the_reference_prior():
    model, inputs, targets, loader = _problem(2)
    base = {name: torch.zeros_like(value) + 0.1 for name, value in model.state_dict().items()}
    prior = ReferencePrior(base)
    code = compress(model, prior, levels=3)
    tuned = finetune(model, code, loader, epochs=3, lr=0.01)
    assert tuned.prior_fingerprint == prior.fingerprint()
    assert tuned.breakdown["layout"] == 1
    allowed = torch.tensor(0.1) + torch.from_numpy(tuned.groups[0].codebook).float()
    assert all(torch.isin(value, allowed).all() for value in tuned.decode().values())
    with pytest.raises(ValueError, match="not the one"):
        finetune(model, code, loader, epochs=1, lr=0.01, prior=ReferencePrior(model.state_dict()))


def test_finetune_rejects_a_code_of_another_model():
    model, _, _, loader = _problem()
    other = compress({"w": torch.ones(3)})
    with pytest.raises(ValueError, match="does not code this model"):
        finetune(model, other, loader, epochs=1, lr=0.01)
    with pytest.raises(ValueError, match="lr"):
        finetune(model, compress(model), loader, epochs=1, lr=0.0)
