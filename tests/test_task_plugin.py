"""A third task through the public protocol only: bounded-loss regression.

The task below is written against `bounds.tasks.Task` alone (no private names of the
package), plugged into `bounds.certify` and re-checked by `bounds.reproduce`: the plug-in
point of the one certify path is real. Its loss is the clipped square error
ℓ = min((ŷ − y)², 1) ∈ [0, 1], bounded by the Occam kl bound (Langford 2005) with K the code
word's length; the check against an independent computation is `bounds.occam_bound` on the
decoded model's mean loss computed here by hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import bounds
from bounds.tasks import Task


@dataclass(frozen=True)
class BoundedRegression:
    """ŷ = model(x) [B] for inputs [B, d]; loss min((ŷ − y)², 1); Occam kl and Hoeffding."""

    clip: float = 1.0
    quiet: bool = field(default=True, compare=False)

    name = "regression"
    headline = ("clipped_square", "kl")
    labels = {"clipped_square": "clipped square error"}
    risks = {"kl": "expected clipped square error", "hoeffding": "as kl, Hoeffding form"}

    def settings(self) -> dict[str, Any]:
        return {"clip": self.clip}

    def default_grid(self) -> list[dict[str, Any]]:
        return [{"levels": 16}, {"levels": 64}]

    def prepare(self, data: Any, candidates: int) -> Any:
        return data

    @torch.no_grad()
    def evaluate(self, model: Any, data: Any, description: str) -> np.ndarray:
        x, y = data
        predictions = model(x).reshape(-1).double()
        return torch.clamp((predictions - y.double()) ** 2 / self.clip, max=1.0).numpy()

    def bounds(self, data, evaluation, code_bits, delta):
        mean = float(evaluation.mean())
        return {
            "clipped_square": {
                method: bounds.occam_bound(len(evaluation), code_bits, delta, risk=mean, method=m)
                for method, m in (("kl", "kl"), ("hoeffding", "hoeffding"))
            }
        }

    def floor(self, data, evaluation, code_bits, delta):
        return bounds.occam_bound(len(evaluation), code_bits, delta, risk=0.0, method="kl").value

    def summary(self, evaluation) -> dict[str, Any]:
        return {"n": len(evaluation), "losses": {"clipped_square": float(evaluation.mean())}}

    def held_out(self, data, evaluation, bounds_, delta):
        mean = float(evaluation.mean())
        held_out = bounds.occam_bound(len(evaluation), 0, delta, risk=mean, method="kl")
        return {"clipped_square": held_out}

    def describe(self, data, evaluation):
        return {"n": len(evaluation)}, [("examples n", str(len(evaluation)))]

    def claim(self, bound, data, code_bits, delta) -> str:
        return (
            f"With probability at least {1 - delta:g}, the decoded model's expected clipped "
            f"square error is at most {bound.value:.4f} (K = {code_bits} bits)."
        )


def linear() -> nn.Module:
    return nn.Linear(3, 1)


def draw(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=generator)
    return x, x @ torch.tensor([0.5, -0.3, 0.2]) + 0.1 * torch.randn(n, generator=generator)


@pytest.fixture(scope="module")
def certified():
    train, test = draw(4000, 0), draw(1000, 1)
    torch.manual_seed(0)
    model = linear()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        loss = ((model(train[0]).reshape(-1) - train[1]) ** 2).mean()
        loss.backward()
        optimizer.step()
    task = BoundedRegression()
    certificate = bounds.certify(model, train, task=task, test_data=test, architecture=linear)
    return task, model, train, certificate


def test_the_toy_task_has_the_protocol():
    assert isinstance(BoundedRegression(), Task)


def test_a_third_task_is_certified_through_the_one_path(certified):
    task, model, train, certificate = certified
    assert certificate.task == "regression" and certificate.headline == ("clipped_square", "kl")
    # The decoded model, rebuilt here by hand from the word, gives the same numbers.
    from quantize import Code, NoPrior

    state = Code.from_bytes(certificate.code.to_bytes(), NoPrior()).decode(NoPrior())
    decoded = linear()
    decoded.load_state_dict(state)
    with torch.no_grad():
        losses = torch.clamp(
            (decoded(train[0]).reshape(-1).double() - train[1].double()) ** 2, max=1
        )
    mean = float(losses.mean())
    assert certificate.train_loss("decoded") == pytest.approx(mean, rel=1e-12)
    expected = bounds.occam_bound(4000, certificate.code_bits, 0.05, risk=mean, method="kl")
    assert certificate.best.value == pytest.approx(expected.value, rel=1e-12)
    assert mean < certificate.best.value < 0.1  # a non-vacuous bound on an easy problem
    assert certificate.test_loss() < certificate.best.value
    # Every candidate of the task's own grid was considered; the word names the chosen one.
    assert len(certificate.candidates) == 2
    assert certificate.grid_index in (0, 1)
    text = certificate.to_markdown()
    assert "clipped square error" in text and "examples n" in text


def test_reproduce_re_checks_the_third_task(certified):
    task, model, train, certificate = certified
    claim = json.loads(certificate.to_json())
    assert claim["task"] == {"name": "regression", "settings": {"clip": 1.0}}
    word = certificate.code.to_bytes()
    result = bounds.reproduce(
        word, linear(), train, certificate=claim, task=task, architecture=linear
    )
    assert result.mismatches == []
    forged = json.loads(certificate.to_json())
    forged["bounds"]["clipped_square"]["kl"]["value"] /= 2
    result = bounds.reproduce(
        word, linear(), train, certificate=forged, task=task, architecture=linear
    )
    assert result.mismatches and "clipped_square kl bound" in result.mismatches[0]
