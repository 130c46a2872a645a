"""End to end: `bounds compute` on a small model, its JSON against the library, and verify."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import SMALL_ARCH, SMALL_DATA, run_cli

import bounds
from cli.app import main


@pytest.fixture(scope="module")
def computed(small_model, tmp_path_factory):
    """compute once with --json and --save-code; return the paths."""
    folder = tmp_path_factory.mktemp("compute")
    cert, code = folder / "cert.json", folder / "small.code"
    argv = ["compute", small_model, "--arch", SMALL_ARCH, "--data", SMALL_DATA,
            "--test-data", SMALL_DATA, "--levels", "4,8", "--json", cert, "--save-code", code,
            "--format", "json", "-q"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    assert exit_info.value.code == 0
    return cert, code


def test_json_numbers_match_the_library(computed):
    cert_path, code_path = computed
    cert = json.loads(cert_path.read_text())
    assert cert["schema_version"] == 2
    assert cert["task"] == {
        "name": "classify",
        "settings": {"methods": ["binomial", "kl", "catoni"], "batch_size": 1024},
    }
    assert cert["headline"] == {"loss": "error", "method": "binomial"}
    n, bits, errors = cert["data"]["n"], cert["code"]["bits"], cert["train"]["decoded"]["errors"]
    assert n == 1500
    assert cert["train"]["decoded"]["n"] == cert["train"]["float"]["n"] == n
    assert cert["train"]["decoded"]["losses"] == {"error": errors / n}
    assert cert["code"]["bits"] == sum(cert["code"]["breakdown"].values())
    assert len(code_path.read_bytes()) == math.ceil(bits / 8)
    assert list(cert["bounds"]) == ["error"]
    assert list(cert["bounds"]["error"]) == ["binomial", "kl", "catoni"]
    for method, row in cert["bounds"]["error"].items():
        expected = bounds.occam_bound(n, bits, cert["delta"], errors=errors, method=method)
        assert row["method"] == method
        assert row["value"] == expected.value
    # 2 levels × 2 schemes × 2 groupings = 8 candidates: exactly 3 bits of the word.
    assert cert["grid"]["size"] == 8 and cert["code"]["breakdown"]["config_choice"] == 3
    test = cert["test"]
    assert test["summary"]["n"] == 300
    assert test["summary"]["losses"] == {"error": test["summary"]["errors"] / 300}
    expected = bounds.test_set_bound(300, test["summary"]["errors"], 0.05)
    assert list(test["bounds"]) == ["error"]
    assert test["bounds"]["error"]["value"] == expected.value
    # The chosen candidate has the smallest binomial bound; a skipped candidate's bound
    # with zero errors was already no better than that.
    evaluated = [c for c in cert["candidates"] if c["bound"] is not None]
    best = min(evaluated, key=lambda c: (c["bound"], c["bits"]))
    assert best["index"] == cert["code"]["grid_index"]
    for skipped in (c for c in cert["candidates"] if c["bound"] is None):
        assert bounds.occam_bound(n, skipped["bits"], 0.05, errors=0).value >= best["bound"]


def test_verify_accepts_the_saved_code(computed, capsys):
    cert, code = computed
    status, out, _ = run_cli(capsys, "verify", code, "--arch", SMALL_ARCH, "--data", SMALL_DATA,
                         "--certificate", cert, "-q")  # fmt: skip
    assert status == 0
    assert "verified" in out


def test_verify_rejects_a_tampered_code(computed, tmp_path, capsys):
    cert, code = computed
    data = bytearray(code.read_bytes())
    data[len(data) // 2] ^= 0x04
    tampered = tmp_path / "tampered.code"
    tampered.write_bytes(bytes(data))
    status, _, err = run_cli(capsys, "verify", tampered, "--arch", SMALL_ARCH, "--data", SMALL_DATA,
                         "--certificate", cert, "-q")  # fmt: skip
    assert status in (1, 2)
    assert "error" in err or "mismatch" in err


def test_verify_rejects_a_tampered_certificate(computed, tmp_path, capsys):
    cert, code = computed
    claimed = json.loads(cert.read_text())
    claimed["bounds"]["error"]["binomial"]["value"] -= 0.01
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(claimed))
    status, _, err = run_cli(capsys, "verify", code, "--arch", SMALL_ARCH, "--data", SMALL_DATA,
                         "--certificate", forged, "-q")  # fmt: skip
    assert status == 1
    assert "mismatch: error binomial bound" in err


def test_markdown_and_latex_formats(small_model, capsys):
    base = ["compute", small_model, "--arch", SMALL_ARCH, "--data", SMALL_DATA, "--levels", "8",
            "--schemes", "kmeans", "-q"]  # fmt: skip
    status, out, _ = run_cli(capsys, *base, "--format", "markdown")
    assert status == 0
    assert "| loss | float train | decoded train | binomial | kl | catoni |" in out
    assert any(line.startswith("| error | ") for line in out.splitlines())
    status, out, _ = run_cli(capsys, *base, "--format", "latex")
    assert status == 0 and r"\begin{tabular}" in out
    assert r"loss & float train & decoded train & binomial & kl & catoni \\" in out
    assert any(line.startswith("error & ") for line in out.splitlines())


def _npz(path, x, y):
    np.savez(path, x=x, y=y)
    return str(path)


def bad_inputs(small_model, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_text("not a torch file")
    pickled = tmp_path / "pickled.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)
    nan_state = torch.load(small_model, weights_only=True)
    nan_state["0.weight"][0, 0, 0] = float("nan")
    nan_model = tmp_path / "nan.pt"
    torch.save(nan_state, nan_model)
    x = np.zeros((10, 1, 40), dtype=np.float32)
    wrong_shape = _npz(tmp_path / "shape.npz", np.zeros((10, 3), np.float32), np.zeros(10, int))
    bad_labels = _npz(tmp_path / "labels.npz", x, np.full(10, 12))
    empty = _npz(tmp_path / "empty.npz", x[:0], np.zeros(0, int))
    corrupt = tmp_path / "corrupt.code"
    corrupt.write_bytes(b"\x00\x01\x02")
    model = ["compute", small_model, "--arch", SMALL_ARCH, "-q"]
    return {
        "missing file": (["compute", tmp_path / "nope.pt"], "does not exist"),
        "not torch": (["compute", junk], "not a readable PyTorch file"),
        "pickle": (["compute", pickled], "--trust-pickle"),
        "architecture": (
            ["compute", small_model, "--arch", "bounds.models.architectures:mnist1d_cnn"],
            "does not fit the architecture",
        ),  # fmt: skip
        "data shape": ([*model, "--data", wrong_shape], "rejects inputs of shape"),
        "labels": ([*model, "--data", bad_labels], "out of range"),
        "nan": (["compute", nan_model, "--arch", SMALL_ARCH, "--data", SMALL_DATA, "-q"], "NaN"),
        "delta": ([*model, "--delta", "1.5"], "delta"),
        "empty": ([*model, "--data", empty], "empty"),
        "unwritable": ([*model, "--json", tmp_path / "no" / "dir" / "c.json"], "cannot write"),
        "corrupt code": (["verify", corrupt, "--arch", SMALL_ARCH, "--data", SMALL_DATA], "code"),
        "cuda": ([*model, "--device", "cuda"], "no CUDA device"),
        "device": ([*model, "--device", "gpu"], "unknown --device 'gpu'"),
        "not a certificate": (
            ["verify", corrupt, "--arch", SMALL_ARCH, "--certificate", _json(tmp_path, {})],
            "lacks a readable task",
        ),
        "a sweep's JSON": (
            [
                "verify",
                corrupt,
                "--arch",
                SMALL_ARCH,
                "--certificate",
                _json(tmp_path, {"rows": []}),
            ],
            "lacks a readable task",
        ),
    }


def _json(tmp_path, content) -> str:
    path = tmp_path / f"not-a-certificate-{len(str(content))}.json"
    path.write_text(json.dumps(content))
    return str(path)


CASES = [
    "missing file", "not torch", "pickle", "architecture", "data shape", "labels", "nan",
    "delta", "empty", "unwritable", "corrupt code", "cuda", "device", "not a certificate",
    "a sweep's JSON",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_2(case, small_model, tmp_path, capsys):
    argv, message = bad_inputs(small_model, tmp_path)[case]
    status, out, err = run_cli(capsys, *argv)
    assert status == 2
    assert err.startswith("error: ")
    assert message in err.replace("\n", " ")
    assert "Traceback" not in err


def _model_files(tmp_path):
    from safetensors.torch import save_file

    from bounds.models.architectures import mnist1d_cnn
    from quantize import Subspace

    torch.manual_seed(1)
    model = mnist1d_cnn(width=4)
    torch.jit.script(model).save(tmp_path / "scripted.pt")
    save_file(model.state_dict(), tmp_path / "weights.safetensors")
    torch.save(model, tmp_path / "pickled.pt")
    metadata = {"arch": "bounds.models.architectures:mnist1d_cnn", "arch_kwargs": {"width": 4}}
    torch.manual_seed(2)  # θ0 is the architecture's initialization under init_seed 2
    network = mnist1d_cnn(width=4)
    Subspace(network, 40, seed=0, init_seed=2, metadata=metadata).save(tmp_path / "subspace.pt")
    return model


@pytest.mark.parametrize(
    "file, extra, architecture, prior_kind",
    [
        ("scripted.pt", ["--code-file"], "torchscript:", "decoder"),
        (
            "weights.safetensors",
            ["--arch", "bounds.models.architectures:mnist1d_cnn:width=4"],
            "bounds.models.architectures:mnist1d_cnn:width=4",
            "none",
        ),  # fmt: skip
        ("pickled.pt", ["--trust-pickle", "--code-file"], "Sequential", "decoder"),
        ("subspace.pt", [], "bounds.models.architectures:mnist1d_cnn:width=4", "subspace"),
    ],
)
def test_every_model_kind_loads(file, extra, architecture, prior_kind, tmp_path, capsys):
    model = _model_files(tmp_path)
    argv = ["compute", tmp_path / file, *extra, "--data", "mnist1d:n=300,m=50,seed=4",
            "--levels", "4", "--schemes", "kmeans", "--format", "json", "-q"]  # fmt: skip
    status, out, _ = run_cli(capsys, *argv)
    assert status == 0
    cert = json.loads(out)
    assert cert["architecture"].startswith(architecture)
    assert cert["prior"]["kind"] == prior_kind
    coded = 40 if prior_kind == "subspace" else sum(p.numel() for p in model.parameters())
    assert cert["code"]["num_params"] == coded


def test_a_redirected_run_prints_no_progress_lines(small_model, tmp_path):
    """Without a terminal there are no bars, so no blank or carriage-return lines on stderr."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "cli", "compute", str(small_model), "--arch", SMALL_ARCH,
            "--data", SMALL_DATA, "--levels", "4", "--schemes", "kmeans"]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "binomial" in result.stdout and "\n\n\n" not in result.stdout


def test_verify_with_only_the_certificate_uses_its_own_settings(tmp_path, monkeypatch, capsys):
    """A model and data of one's own: verify needs nothing but the code word and certificate."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "own_model.py").write_text(
        "import torch\n\ndef make(hidden=8):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, hidden),\n"
        "                               torch.nn.ReLU(), torch.nn.Linear(hidden, 3))\n"
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 6)).astype(np.float32)
    np.savez(tmp_path / "own.npz", x=x, y=(x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1))
    monkeypatch.syspath_prepend(str(tmp_path))
    import own_model

    torch.manual_seed(0)
    torch.save(own_model.make(8).state_dict(), tmp_path / "own.pt")
    status, _, err = run_cli(capsys, "compute", "own.pt", "--arch", "own_model:make:hidden=8",
                             "--data", "own.npz", "--levels", "4", "--json", "own.json",
                             "--save-code", "own.code", "-q")  # fmt: skip
    assert status in (0, None), err
    certificate = json.loads((tmp_path / "own.json").read_text())
    stated = {"task": "classify", "model": "own.pt", "arch": "own_model:make:hidden=8"}
    assert certificate["invocation"] == stated | {"data": "own.npz"}
    status, out, err = run_cli(capsys, "verify", "own.code", "--certificate", "own.json")
    assert status in (0, None), err
    assert "certificate: verified" in out
    assert "using the certificate's --data own.npz" in err.replace("\n", " ")
    # A flag that contradicts the certificate is a mismatch, even where the numbers agree.
    np.savez(tmp_path / "other.npz", x=x, y=(x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1))
    status, _, err = run_cli(capsys, "verify", "own.code", "--certificate", "own.json",
                             "--data", "other.npz", "-q")  # fmt: skip
    assert status == 1 and "--data: certificate says own.npz, command line says other.npz" in err


def test_a_missing_file_is_reported_before_torch_is_imported(tmp_path):
    """Paths and options are checked first: a typo costs no torch import."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from cli.app import main\n"
        "try:\n"
        "    main(['compute', 'missing.pt', '--test-data', 'missing.npz', '-q'])\n"
        "except SystemExit as stop:\n"
        "    print(stop.code, 'torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.stdout.split() == ["2", "False"], result.stderr
    assert result.stderr == "error: model file 'missing.pt' does not exist\n"


def test_help_names_arguments_and_data_specs_and_shows_no_value_on_flags(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one line per option, so each can be read alone
    _, compute_help, _ = run_cli(capsys, "compute", "--help")
    _, verify_help, _ = run_cli(capsys, "verify", "--help")
    assert "bounds compute [OPTIONS] {MODEL}" in compute_help
    assert "bounds verify [OPTIONS] {CODE}" in verify_help
    for form in ("mnist1d[:n=N,m=M,seed=S]", "FILE.npz", "module:function", "stdlib"):
        assert form in compute_help, form
    flags = ("--code-file", "--trust-pickle", "--distributed", "--quiet")
    for line in compute_help.splitlines():
        if any(f"│ {flag} " in line for flag in flags):
            assert "<bool>" not in line, line
    assert "--device" in verify_help
