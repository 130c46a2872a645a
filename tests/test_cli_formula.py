"""`bounds formula ...` prints the library's numbers and rejects bad input with exit code 2."""

import json
import math

import pytest
from conftest import run_cli

import bounds


def test_occam_json_matches_library(capsys):
    code, out, _ = run_cli(
        capsys, "formula", "occam", "--n", "60000", "--errors", "900", "--bits", "7000", "--json"
    )
    assert code == 0
    rows = {row["method"]: row for row in json.loads(out)["bounds"]}
    assert set(rows) == set(bounds.OCCAM_METHODS)
    for method, row in rows.items():
        expected = bounds.occam_bound(60000, 7000, 0.05, errors=900, method=method)
        assert row["value"] == expected.value
        assert row["delta_shares"] == {"occam": 0.05}


def test_occam_table_lists_every_method(capsys):
    code, out, _ = run_cli(
        capsys, "formula", "occam", "--n", "1000", "--errors", "10", "--bits", "50"
    )
    assert code == 0
    for method in bounds.OCCAM_METHODS:
        assert method in out
    assert f"{bounds.occam_bound(1000, 50, errors=10).value:.6f}" in out


def test_occam_with_mean_loss_skips_binomial(capsys):
    code, out, _ = run_cli(
        capsys, "formula", "occam", "--n", "1000", "--risk", "0.1", "--bits", "50", "--json"
    )
    assert code == 0
    assert [row["method"] for row in json.loads(out)["bounds"]] == ["kl", "hoeffding", "catoni"]


def test_pac_bayes_json(capsys):
    argv = ["formula", "pac-bayes", "--n", "50000", "--risk", "0.03", "--kl", "1000", "--json"]
    code, out, _ = run_cli(capsys, *argv, "--mc-samples", "1000", "--mc-delta", "0.01")
    assert code == 0
    rows = json.loads(out)["bounds"]
    assert [row["method"] for row in rows] == list(bounds.PAC_BAYES_METHODS)
    kl_row = rows[0]
    expected = bounds.pac_bayes_bound(0.03, 1000, 50000, mc_samples=1000, mc_delta=0.01)
    assert kl_row["value"] == expected.value
    assert kl_row["delta_shares"]["monte_carlo"] == 0.01


def test_test_set(capsys):
    code, out, _ = run_cli(
        capsys, "formula", "test-set", "--m", "10000", "--errors", "100", "--json"
    )
    assert code == 0
    value = json.loads(out)["bounds"][0]["value"]
    assert value == pytest.approx(0.011797, abs=5e-7)
    assert value == bounds.binom_tail_inv(10000, 100, math.log(0.05))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["formula", "test-set", "--m", "10", "--errors", "11"], "at most"),
        (["formula", "test-set", "--m", "10", "--errors", "1", "--delta", "1.5"], "delta"),
        (["formula", "occam", "--n", "0", "--errors", "0", "--bits", "1"], "positive"),
        (["formula", "occam", "--n", "10", "--errors", "0", "--bits", "-1"], "non-negative"),
        (["formula", "occam", "--n", "10", "--errors", "0", "--bits", "nan"], "finite"),
        (["formula", "pac-bayes", "--n", "10", "--risk", "2", "--kl", "1"], "loss range"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
