"""The example scripts run and print what they promise (small settings for speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(*argv, cwd=None) -> str:
    result = subprocess.run(
        [sys.executable, *map(str, argv)], cwd=cwd, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_published_numbers_are_reproduced():
    lines = run(EXAMPLES / "published_numbers.py").splitlines()[1:4]
    for line in lines:
        published, computed = (float(value) for value in line.split()[-2:])
        assert abs(published - computed) < 5e-6, line


def test_bring_your_own_model_and_data(tmp_path):
    out = tmp_path / "moons.pt"
    printed = run(EXAMPLES / "bring_your_own.py", "--out", out, "--hidden", "8", cwd=EXAMPLES)
    assert "| loss | float train | decoded train | binomial | kl | catoni |" in printed
    assert "(binomial Occam bound, K = " in printed
    argv = ["-m", "cli", "compute", out, "--arch", "my_project:make_model:hidden=8",
            "--data", "my_project:training_data", "--test-data", "my_project:test_data",
            "--levels", "8,16", "--format", "json", "-q"]  # fmt: skip
    certificate = json.loads(run(*argv, cwd=EXAMPLES))
    assert certificate["data"]["n"] == 5000 and certificate["test"]["summary"]["n"] == 2000
    assert certificate["headline"] == {"loss": "error", "method": "binomial"}
    assert 0 < certificate["bounds"]["error"]["binomial"]["value"] < 1


def test_width_sweep_through_the_library(tmp_path):
    printed = run(EXAMPLES / "width_sweep.py", "--out", tmp_path, "--widths", "4,8",
                  "--dim", "40", "--epochs", "1", "--n", "600", "--m", "200",
                  "--levels", "8", "--quiet")  # fmt: skip
    assert "hold simultaneously" in printed
    assert (tmp_path / "bounds.png").stat().st_size > 0
    assert len(json.loads((tmp_path / "sweep.json").read_text())["rows"]) == 2


@pytest.mark.slow
def test_byte_transformer_on_the_standard_library(tmp_path):
    printed = run(EXAMPLES / "byte_transformer.py", "--out", tmp_path, "--widths", "16",
                  "--depth", "1", "--context", "32", "--steps", "30", "--max-file-bytes", "512",
                  "--levels", "8", "--quiet")  # fmt: skip
    assert "token Bernstein" in printed
    (row,) = json.loads((tmp_path / "results.json").read_text())
    assert row["width"] == 16 and row["code_bits"] > 0
    assert row["bits_bound"]["token_bernstein"] > row["train_bits"] > 0
    assert row["top1_bound"]["token_azuma"] > row["train_top1"]
    certificate = json.loads((tmp_path / "width-16.json").read_text())
    assert certificate["code"]["bits"] == row["code_bits"]
    assert (tmp_path / "width-16.code").stat().st_size * 8 >= row["code_bits"]


def test_lm_scaling_prints_both_codes(tmp_path):
    printed = run(EXAMPLES / "lm_scaling.py", "--out", tmp_path, "--widths", "8,16",
                  "--teacher-width", "16", "--teacher-steps", "20", "--steps", "20",
                  "--sequences", "8", "--max-file-bytes", "400", "--context", "16",
                  "--quiet")  # fmt: skip
    assert "| code | width | params | K (bits) |" in printed and "hold simultaneously" in printed
    rows = json.loads((tmp_path / "results.json").read_text())
    assert sorted((row["code"], row["width"]) for row in rows) == [
        ("parameters", 8), ("parameters", 16), ("requential", 8), ("requential", 16)
    ]  # fmt: skip
    assert (tmp_path / "bounds.png").stat().st_size > 0
