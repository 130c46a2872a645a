"""`bounds.sweep` and `bounds sweep`: δ split arithmetic, ordering, outputs and model inputs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import run_cli

import bounds
from bounds.models.architectures import mnist1d_cnn
from bounds.pipeline.sweep import SweepResult
from bounds.tasks.classification.data import MNIST1DSpec, mnist1d

DATA = "mnist1d:n=600,m=200,seed=5"
SPEC = MNIST1DSpec(n=600, m=200, seed=5)
GRID = [{"levels": 4, "scheme": "kmeans"}]
WIDTHS = (5, 2, 3)  # deliberately not in size order
ARCH = "bounds.models.architectures:mnist1d_cnn:width={}"


def untrained(width: int) -> torch.nn.Module:
    torch.manual_seed(width)
    return mnist1d_cnn(width=width)


@pytest.fixture(scope="module")
def data():
    return mnist1d(SPEC, split="train"), mnist1d(SPEC, split="test")


def run_sweep(data, simultaneous: bool) -> SweepResult:
    train, test = data
    models = [(f"cnn_w{width}", untrained(width)) for width in WIDTHS]
    return bounds.sweep(
        models, train, test_data=test, delta=0.05, simultaneous=simultaneous, grid=GRID
    )


@pytest.fixture(scope="module")
def joint(data):
    return run_sweep(data, simultaneous=True)


@pytest.fixture(scope="module")
def separate(data):
    return run_sweep(data, simultaneous=False)


def test_simultaneous_splits_delta_evenly_over_the_models(joint):
    share = 0.05 / 3
    assert joint.simultaneous and joint.delta == 0.05
    assert joint.delta_shares == {"cnn_w2": share, "cnn_w3": share, "cnn_w5": share}
    assert math.fsum(joint.delta_shares.values()) == pytest.approx(0.05, rel=1e-15)
    assert math.fsum(joint.delta_shares.values()) <= 0.05 * (1 + 1e-12)
    for row in joint.rows:
        cert = row.certificate
        assert cert.delta == share
        n, bits, errors = cert.data["n"], cert.code_bits, cert.train["decoded"]["errors"]
        assert n == 600 and cert.train["decoded"]["n"] == 600
        assert list(cert.bounds) == ["error"]
        assert list(cert.bounds["error"]) == ["binomial", "kl", "catoni"]
        for method, bound in cert.bounds["error"].items():
            assert bound.delta == share
            assert (
                bound.value
                == bounds.occam_bound(n, bits, share, errors=errors, method=method).value
            )
        summary = cert.test["summary"]
        assert summary["n"] == 200
        assert (
            cert.test["bounds"]["error"].value
            == bounds.test_set_bound(200, summary["errors"], share).value
        )
    assert "hold simultaneously" in joint.claim and "δ/3" in joint.claim


def test_separate_claims_use_the_whole_delta_per_row(separate):
    assert not separate.simultaneous
    assert separate.delta_shares == {"cnn_w2": 0.05, "cnn_w3": 0.05, "cnn_w5": 0.05}
    for row in separate.rows:
        cert = row.certificate
        expected = bounds.occam_bound(
            cert.data["n"], cert.code_bits, 0.05, errors=cert.train["decoded"]["errors"]
        )
        assert cert.delta == 0.05 and cert.best.value == expected.value
        assert cert.best == cert.bounds["error"]["binomial"]
    assert separate.claim.startswith("Each row is a separate claim")
    assert "not claimed to hold simultaneously" in separate.claim


def test_simultaneous_rows_pay_only_for_the_smaller_delta(joint, separate):
    # Same decoded models (one grid configuration), so the bounds differ only through δ.
    for together, alone in zip(joint.rows, separate.rows, strict=True):
        assert together.certificate.code_sha256 == alone.certificate.code_sha256
        assert together.certificate.best.value > alone.certificate.best.value


def test_a_result_cannot_claim_more_than_its_certificates(joint, separate):
    as_separate = {row.name: 0.05 for row in joint.rows}
    with pytest.raises(ValueError, match="at its δ share"):
        SweepResult(joint.rows, 0.05, as_separate, simultaneous=False)
    with pytest.raises(ValueError, match="sum to at most δ"):
        SweepResult(separate.rows, 0.05, as_separate, simultaneous=True)
    rebuilt = SweepResult(joint.rows[::-1], 0.05, dict(joint.delta_shares), simultaneous=True)
    assert rebuilt.to_dict() == joint.to_dict()


def test_rows_are_sorted_by_parameter_count(joint):
    assert [row.name for row in joint.rows] == ["cnn_w2", "cnn_w3", "cnn_w5"]
    sizes = [row.certificate.model_params for row in joint.rows]
    assert sizes == [sum(p.numel() for p in untrained(w).parameters()) for w in (2, 3, 5)]
    assert list(joint.delta_shares) == ["cnn_w2", "cnn_w3", "cnn_w5"]


def test_json_has_one_row_per_model_with_its_certificate(joint):
    data = json.loads(joint.to_json())
    assert data["claim"] == joint.claim and data["simultaneous"] is True
    assert data["methods"] == ["binomial", "kl", "catoni"]
    assert [row["name"] for row in data["rows"]] == ["cnn_w2", "cnn_w3", "cnn_w5"]
    for row, expected in zip(data["rows"], joint.rows, strict=True):
        cert = expected.certificate
        assert row["num_params"] == cert.num_params and row["code_bits"] == cert.code_bits
        assert row["model_params"] == cert.model_params == cert.num_params
        assert row["quantized_train_error"] == cert.train["decoded"]["errors"] / 600
        assert row["test_error"] == cert.test["summary"]["errors"] / 200
        assert row["bounds"]["binomial"] == cert.bounds["error"]["binomial"].value
        assert row["certificate"]["delta"] == 0.05 / 3


def test_markdown_and_latex_tables(joint):
    markdown = joint.to_markdown()
    assert markdown.startswith(f"**{joint.claim}**")
    assert sum(line.startswith("| cnn_w") for line in markdown.splitlines()) == 3
    latex = joint.to_latex()
    body = [line for line in latex.splitlines() if line.startswith("cnn")]
    assert [line.split(" & ")[0] for line in body] == [r"cnn\_w2", r"cnn\_w3", r"cnn\_w5"]
    first = joint.rows[0].certificate
    assert body[0].split(" & ")[-3] == f"{first.bounds['error']['binomial'].value:.4f}"
    assert r"\begin{tabular}{lrrrrrrrrr}" in latex and "booktabs" not in latex
    assert "model & params & K (bits) & bits/param" in latex
    assert "quant. train err & test err & binomial bound & kl bound & catoni bound" in latex


@pytest.mark.parametrize(
    "models, kwargs, message",
    [
        ([], {}, "at least one model"),
        ([("a", None), ("a", None)], {}, "repeated"),
        ([("a", None)], {"delta": 1.5}, "delta"),
        ([("a", None)], {"model_kwargs": {"b": {}}}, "not in the sweep"),
        ([("a", None)], {"model_kwargs": {"a": {"delta": 0.1}}}, "may not set"),
    ],
)
def test_bad_sweep_input_is_refused_before_any_work(models, kwargs, message):
    with pytest.raises(ValueError, match=message):
        bounds.sweep(models, None, **kwargs)


def test_public_name_is_the_function_and_import_stays_torch_free():
    code = (
        "import sys, bounds; from bounds.pipeline.sweep import SweepResult; "
        "print(bounds.sweep.__module__, callable(bounds.sweep), 'torch' in sys.modules)"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert output.stdout.split() == ["bounds.pipeline.sweep", "True", "False"], output.stderr


# --- the command line -------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """State dicts w2.pt, w3.pt, w5.pt and a file the directory expansion must skip."""
    folder = tmp_path_factory.mktemp("models")
    for width in WIDTHS:
        torch.save(untrained(width).state_dict(), folder / f"w{width}.pt")
    (folder / "notes.txt").write_text("not a model")
    return folder


def arch_options(*widths: int) -> list[str]:
    return [part for w in widths for part in ("--arch", ARCH.format(w))]


FAST = ["--data", DATA, "--levels", "4", "--schemes", "kmeans", "-q"]


def test_cli_directory_input_writes_every_output(model_dir, tmp_path, capsys):
    out = {name: tmp_path / name for name in ("s.json", "s.tex", "s.md", "s.png", "s.pdf")}
    argv = ["sweep", model_dir, *arch_options(2, 3, 5), *FAST, "--test-data", DATA,
            "--simultaneous", "--json", out["s.json"], "--latex", out["s.tex"],
            "--markdown", out["s.md"], "--plot", out["s.png"], "--plot", out["s.pdf"],
            "--format", "json"]  # fmt: skip
    status, stdout, _ = run_cli(capsys, *argv)
    assert status == 0
    data = json.loads(out["s.json"].read_text())
    assert json.loads(stdout) == data
    assert [row["name"] for row in data["rows"]] == ["w2.pt", "w3.pt", "w5.pt"]
    sizes = [row["model_params"] for row in data["rows"]]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    assert data["simultaneous"] and set(data["delta_shares"].values()) == {0.05 / 3}
    assert [row["certificate"]["architecture"] for row in data["rows"]] == [
        ARCH.format(w) for w in (2, 3, 5)
    ]
    assert all(row["test_error"] is not None for row in data["rows"])
    assert r"w2.pt & 250 &" in out["s.tex"].read_text()
    assert "| w5.pt |" in out["s.md"].read_text()
    assert out["s.png"].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert out["s.pdf"].read_bytes().startswith(b"%PDF")


def test_cli_glob_input_and_separate_table(model_dir, capsys):
    pattern = str(model_dir / "w[23].pt")
    status, stdout, _ = run_cli(capsys, "sweep", pattern, *arch_options(2, 3), *FAST)
    assert status == 0
    text = " ".join(stdout.split())
    assert "Each row is a separate claim" in text
    assert "δ shares (separate claims): w2.pt 0.05, w3.pt 0.05" in text
    assert "w2.pt" in stdout and "w3.pt" in stdout and "w5.pt" not in stdout
    assert "test err" not in text  # no test data, no empty column


def test_cli_reads_the_architecture_from_checkpoint_metadata(tmp_path, capsys):
    from quantize import Subspace

    for width in (2, 4):
        metadata = {
            "arch": "bounds.models.architectures:mnist1d_cnn",
            "arch_kwargs": {"width": width},
        }
        model = Subspace(untrained(width), 10 * width, seed=0, init_seed=width, metadata=metadata)
        model.save(tmp_path / f"sub{width}.pt")
    status, stdout, _ = run_cli(capsys, "sweep", tmp_path / "sub*.pt", *FAST, "--format", "json")
    assert status == 0
    rows = json.loads(stdout)["rows"]
    assert [row["num_params"] for row in rows] == [20, 40]  # the subspace dimensions
    networks = [sum(p.numel() for p in untrained(width).parameters()) for width in (2, 4)]
    assert [row["model_params"] for row in rows] == networks  # what the x axis shows
    assert [row["certificate"]["architecture"] for row in rows] == [ARCH.format(2), ARCH.format(4)]


def bad_inputs(model_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    sweep = ["sweep", model_dir, *arch_options(2, 3, 5), "-q"]
    return {
        "no match": (["sweep", tmp_path / "none*.pt", "--arch", ARCH.format(2)], "matches no file"),
        "empty folder": (["sweep", empty, "--arch", ARCH.format(2)], "holds no .pt"),
        "missing": (["sweep", tmp_path / "gone.pt"], "does not exist"),
        "twice": (["sweep", model_dir, model_dir / "w2.pt", "--arch", ARCH.format(2)], "twice"),
        "arch count": (["sweep", model_dir, *arch_options(2, 3)], "--arch is given 2 times"),
        "wrong pairing": (["sweep", model_dir, *arch_options(3, 2, 5)], "does not fit"),
        "plot suffix": ([*sweep, "--plot", tmp_path / "fig.jpg"], "must end in .png or .pdf"),
        "unwritable": ([*sweep, "--json", tmp_path / "no" / "s.json"], "cannot write JSON"),
        "delta": ([*sweep, "--delta", "0"], "delta"),
    }


@pytest.mark.parametrize(
    "case",
    ["no match", "empty folder", "missing", "twice", "arch count", "wrong pairing",
     "plot suffix", "unwritable", "delta"],
)  # fmt: skip
def test_cli_bad_input_is_one_line_and_exit_2(case, model_dir, tmp_path, capsys):
    argv, message = bad_inputs(model_dir, tmp_path)[case]
    status, stdout, err = run_cli(capsys, *argv)
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err
    assert stdout == ""


def test_cli_sweeps_requential_students_of_one_teacher(small_model, tmp_path, capsys):
    import shutil

    from conftest import SMALL_ARCH, SMALL_DATA

    students = [f"bounds.models.architectures:mnist1d_cnn:width={w}" for w in (2, 8)]
    argv = ["sweep", small_model, "--arch", SMALL_ARCH, "--data", SMALL_DATA, "--code",
            "requential", "--labels", "300", "--simultaneous", "--format", "json",
            "-q"]  # fmt: skip
    for spec in students:
        argv += ["--student-arch", spec]
    status, stdout, err = run_cli(capsys, *argv)
    assert status in (0, None), err
    result = json.loads(stdout)
    rows = {row["name"]: row for row in result["rows"]}
    assert sorted(rows) == ["width=2", "width=8"]
    assert result["delta_shares"] == {"width=2": 0.025, "width=8": 0.025}
    for name, width in (("width=2", 2), ("width=8", 8)):
        certificate = rows[name]["certificate"]
        assert certificate["code"]["config"]["family"] == "requential"
        assert certificate["code"]["config"]["labels"] == 300
        assert certificate["prior"]["student"]["spec"].endswith(f"width={width}")
        assert rows[name]["model_params"] == sum(p.numel() for p in mnist1d_cnn(width).parameters())
        assert "student the decoder re-trains" in certificate["claim"]
    # One teacher, so a second MODEL, or parameter-code options, are refused.
    second = shutil.copy(small_model, tmp_path / "second.pt")
    status, _, err = run_cli(capsys, *argv, second)
    assert status == 2 and "one MODEL" in err
    status, _, err = run_cli(capsys, *argv, "--levels", "8")
    assert status == 2 and "do not apply" in err
