"""Tests of the configuration search over a declared grid."""

from __future__ import annotations

import math

import pytest
import torch

from quantize import Code, default_grid, grid_fingerprint, product_grid, search


def _weights() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(40, 30, generator=generator),
        "b.weight": torch.randn(30, 5, generator=generator) * 5,
        "steps": torch.tensor(3),
    }


def _squared_error(reference: dict[str, torch.Tensor]):
    def evaluate(decoded: dict[str, torch.Tensor]) -> float:
        return sum(
            float(((decoded[k] - v) ** 2).sum())
            for k, v in reference.items()
            if v.is_floating_point()
        )

    return evaluate


def test_product_grid_enumerates_every_combination_in_order():
    grid = product_grid(levels=(2, 4), coders=("auto", "zstd"), groups=("global",))
    assert len(grid) == 4
    assert grid[0] == {
        "levels": 2,
        "scheme": "kmeans",
        "coder": "auto",
        "groups": "global",
        "precision": "float16",
    }
    assert [(c["levels"], c["coder"]) for c in grid] == [
        (2, "auto"),
        (2, "zstd"),
        (4, "auto"),
        (4, "zstd"),
    ]
    assert len(default_grid()) == 8


def test_grid_fingerprint_is_canonical():
    grid = product_grid(levels=(4, 8))
    assert grid_fingerprint(grid) == grid_fingerprint([dict(reversed(c.items())) for c in grid])
    assert grid_fingerprint([{"levels": 16}]) == grid_fingerprint(
        [{"levels": 16, "scheme": "kmeans", "coder": "auto", "groups": "global"}]
    )
    assert grid_fingerprint(grid) != grid_fingerprint(grid[::-1])
    assert len(grid_fingerprint(grid)) == 64


def test_search_codes_every_candidate_with_its_grid_index():
    weights = _weights()
    grid = product_grid(levels=(2, 4, 16), groups=("global", "tensor"))
    seen = []

    def evaluate(decoded):
        seen.append(decoded)
        return _squared_error(weights)(decoded)

    result = search(weights, evaluate, grid)
    assert len(result.candidates) == len(grid) == 6
    assert result.fingerprint == grid_fingerprint(grid)
    for index, candidate in enumerate(result.candidates):
        code = candidate.code
        assert candidate.index == code.grid_index == index
        assert code.grid_size == 6
        assert code.breakdown["config_choice"] == math.ceil(math.log2(6))
        assert candidate.config == {**grid[index]}
        assert candidate.bits == code.bits
        decoded = Code.from_bytes(code.to_bytes()).decode()
        assert all(torch.equal(decoded[k], seen[index][k]) for k in decoded)
        assert candidate.risk == pytest.approx(_squared_error(weights)(decoded))
    by_risk = result.best()
    assert by_risk.risk == min(c.risk for c in result.candidates)
    assert by_risk.config["levels"] == 16  # the finest codebook has the smallest error
    by_bits = result.best(key=lambda c: c.bits)
    assert by_bits.bits == min(c.bits for c in result.candidates)
    assert by_bits.config["levels"] == 2


def test_search_rejects_bad_grids_and_unrankable_risks():
    weights = _weights()
    with pytest.raises(ValueError, match="unknown grid keys"):
        search(weights, lambda d: 0.0, [{"levels": 4, "colour": "red"}])
    with pytest.raises(ValueError, match="empty"):
        search(weights, lambda d: 0.0, [])
    with pytest.raises(ValueError, match="scheme"):
        search(weights, lambda d: 0.0, [{"scheme": "magic"}])
    result = search(weights, lambda d: {"loss": 1.0}, [{"levels": 2}])
    with pytest.raises(ValueError, match="key="):
        result.best()
    assert result.best(key=lambda c: c.risk["loss"]).index == 0


def test_search_evaluates_shortest_first_and_honours_skip():
    weights = _weights()
    grid = product_grid(levels=(2, 4, 16), groups=("global", "tensor"))
    order: list[int] = []
    threshold = sorted(c.bits for c in search(weights, lambda d: 0.0, grid).candidates)[2]

    def evaluate(decoded):
        order.append(len(order))
        return _squared_error(weights)(decoded)

    seen_bits: list[int] = []

    def skip(code):
        seen_bits.append(code.bits)
        return code.bits > threshold

    result = search(weights, evaluate, grid, skip=skip)
    assert seen_bits == sorted(seen_bits)  # asked in order of code length
    skipped = [c for c in result.candidates if c.risk is None]
    assert {c.index for c in skipped} == {c.index for c in result.candidates if c.bits > threshold}
    assert len(order) == len(grid) - len(skipped)
    assert result.best().risk is not None
    with pytest.raises(ValueError, match="skipped"):
        search(weights, evaluate, grid, skip=lambda code: True).best()
