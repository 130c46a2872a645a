"""A fine-tuned model with a frozen base: only the trained tensors (LoRA factors) are coded."""

import pytest
import torch
from torch import nn

from quantize import Code, ReferencePrior, compress
from quantize.base import FineTuned
from quantize.priors import fingerprint_state_dict


class LoRALinear(nn.Module):
    """y = x Wᵀ + b + x Aᵀ Bᵀ with W, b frozen (the base) and rank-r factors A, B trained."""

    def __init__(self, features: int, rank: int) -> None:
        super().__init__()
        self.base = nn.Linear(features, features)
        self.lora_a = nn.Parameter(torch.randn(rank, features) * 0.1)
        self.lora_b = nn.Parameter(torch.randn(features, rank) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + x @ self.lora_a.T @ self.lora_b.T


def lora_model(seed: int = 0) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    model = nn.Sequential(LoRALinear(32, 2), nn.ReLU(), LoRALinear(32, 2))
    base = {k: v.clone() for k, v in model.state_dict().items() if "lora" not in k}
    return model, base


def test_only_the_trained_tensors_are_coded_and_the_base_is_exact():
    model, base = lora_model()
    tuned = FineTuned(model, base, name="toy base")
    assert sorted(tuned.coded_state()) == [
        "model.0.lora_a",
        "model.0.lora_b",
        "model.2.lora_a",
        "model.2.lora_b",
    ]
    code = compress(tuned, levels=8)
    assert code.num_params == 4 * 2 * 32
    full = compress(model, levels=8)
    assert code.bits < full.bits / 5
    decoded = Code.from_bytes(code.to_bytes(), tuned.prior()).decode(tuned.prior())
    copy = FineTuned(lora_model()[0], base)
    copy.load_coded_state(decoded)
    state = copy.model.state_dict()
    for key, value in base.items():
        assert torch.equal(state[key], value)
    for key, value in decoded.items():
        assert torch.equal(copy.state_dict()[key], value)
    x = torch.randn(5, 32)
    assert torch.allclose(copy(x), model(x), atol=0.05)


def test_the_prior_names_the_base_and_the_coded_layout():
    model, base = lora_model()
    prior = FineTuned(model, base).prior()
    other_base = {k: v + (k == "0.base.bias") for k, v in base.items()}
    other_model = lora_model()[0]
    other_model.load_state_dict({**other_model.state_dict(), **other_base})
    assert FineTuned(other_model, other_base).prior().fingerprint() != prior.fingerprint()
    assert FineTuned(lora_model(1)[0], lora_model(1)[1]).prior().fingerprint() != (
        prior.fingerprint()
    )
    same = FineTuned(lora_model()[0], base).prior()
    assert same.fingerprint() == prior.fingerprint()
    assert prior.describe()["kind"] == "base"
    assert prior.describe()["base_elements"] == sum(v.numel() for v in base.values())
    assert prior.fingerprint() != fingerprint_state_dict(base)  # the layout is hashed too


def test_a_word_needs_its_base():
    model, base = lora_model()
    tuned = FineTuned(model, base)
    word = compress(tuned, levels=8).to_bytes()
    wrong = FineTuned(lora_model(1)[0], lora_model(1)[1]).prior()
    with pytest.raises(ValueError):
        Code.from_bytes(word, wrong).decode(wrong)


def test_a_changed_base_tensor_is_refused():
    model, base = lora_model()
    with torch.no_grad():
        model[0].base.weight[0, 0] += 1e-3
    with pytest.raises(ValueError, match="base tensors differ"):
        FineTuned(model, base)


def test_bad_bases_are_refused():
    model, base = lora_model()
    with pytest.raises(ValueError, match="lacks"):
        FineTuned(model, {**base, "extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="nothing was trained"):
        FineTuned(model, model.state_dict())


def test_full_fine_tune_codes_the_difference_from_the_base():
    # The other way to use a base: every tensor changed, coded as θ − θ0.
    model, base = lora_model()
    plain = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32))
    plain.load_state_dict({k.replace(".base", ""): v for k, v in base.items()})
    reference = {k: v.clone() for k, v in plain.state_dict().items()}
    with torch.no_grad():
        for parameter in plain.parameters():
            parameter.add_(1e-3 * torch.randn_like(parameter))
    prior = ReferencePrior(reference)
    with_prior = compress(plain, prior, levels=8)
    assert with_prior.bits < compress(plain, levels=8).bits
    decoded = with_prior.decode(prior)
    state = plain.state_dict()

    def largest_error(values):
        return max(float((values[k] - state[k]).abs().max()) for k in state)

    assert largest_error(decoded) < largest_error(compress(plain, levels=8).decode()) / 5
