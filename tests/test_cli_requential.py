"""End to end: `bounds compute TEACHER --code requential|prequential` and `bounds verify`.

The teacher is conftest's small MNIST-1D model; the certified model is a width-4 student that the
decoder re-trains from the word. The certificate's numbers are checked against the library, the
word against `bounds verify` (accepted as it is; refused with one line when a bit flips; a
mismatch when the certificate is edited), the student checkpoint written next to the word against
the decoder, and bad command lines against the one-line, exit-2 rule.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import SMALL_ARCH, SMALL_DATA, run_cli

import bounds
from cli.app import main
from cli.specs import requential_from_certificate
from quantize.requential import RequentialCode

STUDENT_ARCH = "bounds.models.architectures:mnist1d_cnn:width=4"
LABELS = (128, 256)


def compute(small_model, folder, *extra):
    """`bounds compute` of the small teacher with a requential code; return (cert, code) paths."""
    cert, code = folder / "cert.json", folder / "student.code"
    argv = ["compute", small_model, "--arch", SMALL_ARCH, "--data", SMALL_DATA,
            "--student-arch", STUDENT_ARCH, "--json", cert, "--save-code", code,
            "--format", "json", "-q", *extra]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    assert exit_info.value.code == 0
    return cert, code


@pytest.fixture(scope="module")
def computed(small_model, tmp_path_factory):
    """compute once with the requential code over a grid of two label counts."""
    folder = tmp_path_factory.mktemp("requential")
    labels = ",".join(map(str, LABELS))
    return compute(small_model, folder, "--code", "requential", "--labels", labels)


def verify(capsys, code, cert):
    return run_cli(capsys, "verify", code, "--certificate", cert, "--data", SMALL_DATA, "-q")


def test_certificate_numbers_match_the_library(computed):
    cert_path, code_path = computed
    cert = json.loads(cert_path.read_text())
    n, bits = cert["data"]["n"], cert["code"]["bits"]
    errors = cert["train"]["decoded"]["errors"]
    assert n == 1500
    config = cert["code"]["config"]
    assert config["family"] == "requential" and config["variant"] == "requential"
    assert config["labels"] in LABELS and cert["code"]["num_params"] == config["labels"]
    assert bits == sum(cert["code"]["breakdown"].values())
    assert list(cert["code"]["breakdown"]) == [
        "header",
        "grid_index",
        "length",
        "payload",
        "checksum",
    ]
    assert cert["code"]["breakdown"]["grid_index"] == 1  # two label counts: one bit
    assert cert["code"]["breakdown"]["checksum"] == 64
    assert len(code_path.read_bytes()) == math.ceil(bits / 8)
    assert cert["architecture"] == STUDENT_ARCH
    prior = cert["prior"]
    assert prior["kind"] == "requential" and prior["student"]["spec"] == STUDENT_ARCH
    # The default pool: MNIST-1D inputs drawn with the training seed + 1, as many as the
    # largest label count.
    assert prior["pool_spec"] == f"mnist1d:n={max(LABELS)},m=1,seed=4"
    assert prior["pool"]["size"] == max(LABELS)
    assert prior["schedule"]["label_counts"] == list(LABELS)
    assert prior["classes"] == 10
    assert cert["grid"]["size"] == len(LABELS)
    assert [c["config"] for c in cert["candidates"]] == [{"labels": count} for count in LABELS]
    chosen = cert["candidates"][cert["code"]["grid_index"]]
    assert chosen["config"]["labels"] == config["labels"] and chosen["bits"] == bits
    assert chosen["bound"] == min(c["bound"] for c in cert["candidates"])
    for method, row in cert["bounds"]["error"].items():
        expected = bounds.occam_bound(n, bits, cert["delta"], errors=errors, method=method)
        assert row["value"] == expected.value
    assert "student the decoder re-trains" in cert["claim"]


def test_verify_accepts_the_saved_word(computed, capsys):
    cert, code = computed
    status, out, err = verify(capsys, code, cert)
    assert status == 0, err
    assert "verified" in out


def flipped(word: bytes, bit: int) -> bytes:
    data = bytearray(word)
    data[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(data)


@pytest.mark.parametrize("where", ["payload", "checksum"])
def test_verify_refuses_a_flipped_bit_in_one_line(computed, where, tmp_path, capsys):
    cert_path, code = computed
    breakdown = json.loads(cert_path.read_text())["code"]["breakdown"]
    start = breakdown["header"] + breakdown["grid_index"] + breakdown["length"]
    offset = breakdown["payload"] // 2 if where == "payload" else breakdown["payload"] + 17
    position = start + offset
    tampered = tmp_path / "tampered.code"
    tampered.write_bytes(flipped(code.read_bytes(), position))
    status, _, err = verify(capsys, tampered, cert_path)
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "corrupted" in err or "checksum" in err
    assert "Traceback" not in err


def test_verify_reports_an_edited_certificate(computed, tmp_path, capsys):
    cert, code = computed
    claimed = json.loads(cert.read_text())
    claimed["train"]["decoded"]["errors"] -= 1
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(claimed))
    status, _, err = verify(capsys, code, forged)
    assert status == 1
    assert "mismatch: decoded errors" in err
    assert "Traceback" not in err


def test_verify_refuses_another_pool(computed, tmp_path, capsys):
    cert, code = computed
    claimed = json.loads(cert.read_text())
    claimed["prior"]["pool_spec"] = f"mnist1d:n={max(LABELS)},m=1,seed=5"
    forged = tmp_path / "pool.json"
    forged.write_text(json.dumps(claimed))
    status, _, err = verify(capsys, code, forged)
    assert status == 2
    assert err.startswith("error: ") and "another fingerprint" in err


def test_student_checkpoint_is_the_decoded_student(computed):
    cert_path, code_path = computed
    cert = json.loads(cert_path.read_text())
    checkpoint = code_path.with_suffix(".student.pt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    from bounds.models.architectures import mnist1d_cnn

    student = mnist1d_cnn(width=4)
    student.load_state_dict(state, strict=True)
    prior = requential_from_certificate(cert["prior"]).prior
    decoded = RequentialCode.from_bytes(code_path.read_bytes(), prior).student.state_dict()
    assert list(state) == list(decoded)
    for name, tensor in decoded.items():
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name
    # The checkpoint makes exactly the certificate's training errors.
    from bounds.tasks.classification.data import MNIST1DSpec, mnist1d

    data = mnist1d(MNIST1DSpec(n=1500, m=300, seed=3))
    inputs, labels = zip(*(data[i] for i in range(len(data))), strict=True)
    with torch.no_grad():
        predicted = student.eval()(torch.stack(inputs)).argmax(dim=1)
    errors = int((predicted != torch.as_tensor(np.array(labels))).sum())
    assert errors == cert["train"]["decoded"]["errors"]


def test_prequential_round_trips_through_compute_and_verify(small_model, tmp_path, capsys):
    pool = "mnist1d:n=200,m=1,seed=11"
    cert, code = compute(small_model, tmp_path, "--code", "prequential", "--labels",
                         "160", "--pool", pool, "--shared-seed", "3")  # fmt: skip
    claimed = json.loads(cert.read_text())
    assert claimed["code"]["config"]["variant"] == "prequential"
    assert claimed["code"]["config"]["labels"] == 160
    assert claimed["code"]["breakdown"]["grid_index"] == 0  # one label count: no bits
    assert claimed["prior"]["pool_spec"] == pool and claimed["prior"]["seed"] == 3
    assert claimed["prior"]["schedule"]["variant"] == "prequential"
    status, out, err = verify(capsys, code, cert)
    assert status == 0, err
    assert "verified" in out


def bad_inputs(small_model, tmp_path):
    npz = tmp_path / "data.npz"
    np.savez(npz, x=np.zeros((20, 1, 40), np.float32), y=np.zeros(20, np.int64))
    np.save(tmp_path / "t.npy", np.arange(10, dtype=np.uint16))
    teacher = ["compute", small_model, "--arch", SMALL_ARCH, "--data", SMALL_DATA, "-q"]
    student = ["--student-arch", STUDENT_ARCH]
    requential = [*teacher, "--code", "requential", *student]
    return {
        "no student": ([*teacher, "--code", "requential"], "needs --student-arch"),
        "prequential, no student": ([*teacher, "--code", "prequential"], "needs --student-arch"),
        "levels": ([*requential, "--levels", "4"], "--levels cannot be used with --code"),
        "prior": ([*requential, "--prior", "init:0"], "--prior cannot be used with --code"),
        "code file": ([*requential, "--code-file"], "--code-file cannot be used with --code"),
        "lm with pool": (
            [*requential, "--task", "lm", "--pool", "mnist1d:n=100,m=1,seed=9"],
            "--pool apply to classifiers only",
        ),
        "lm without start": (
            [*requential, "--task", "lm", "--data", str(tmp_path / "t.npy")],
            "needs --start-token",
        ),
        "sequence length for classifier": (
            [*requential, "--sequence-length", "8"],
            "--sequence-length apply to --task lm only",
        ),
        "student without code": ([*teacher, *student], "apply to --code requential"),
        "pool without code": (
            [*teacher, "--pool", "mnist1d:n=100,m=1,seed=9"],
            "apply to --code requential",
        ),
        "missing pool": (
            [*requential, "--pool", str(tmp_path / "nope.npz"), "--labels", "10"],
            "does not exist",
        ),
        "unknown pool spec": ([*requential, "--pool", "nope", "--labels", "10"], "unknown data"),
        "data without pool": (
            [
                "compute",
                small_model,
                "--arch",
                SMALL_ARCH,
                "--data",
                str(npz),
                "-q",
                "--code",
                "requential",
                *student,
            ],
            "needs --pool",
        ),  # fmt: skip
        "labels beyond the pool": (
            [*requential, "--pool", "mnist1d:n=100,m=1,seed=9", "--labels", "200"],
            "the pool has 100",
        ),
        "labels not integers": ([*requential, "--labels", "10,x"], "comma-separated integers"),
        "student option": (
            [
                *teacher,
                "--code",
                "requential",
                "--student-arch",
                "bounds.models.architectures:mnist1d_cnn:depth=3",
                "--labels",
                "10",
            ],
            "cannot build the student",
        ),  # fmt: skip
        "student classes": (
            [
                *teacher,
                "--code",
                "requential",
                "--student-arch",
                "bounds.models.architectures:mnist1d_cnn:width=4,classes=5",
                "--labels",
                "10",
            ],
            "expected [10, 10]",
        ),  # fmt: skip
    }


CASES = [
    "no student", "prequential, no student", "levels", "prior", "code file", "lm with pool",
    "lm without start", "sequence length for classifier",
    "student without code", "pool without code", "missing pool", "unknown pool spec",
    "data without pool", "labels beyond the pool", "labels not integers", "student option",
    "student classes",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_2(case, small_model, tmp_path, capsys):
    argv, message = bad_inputs(small_model, tmp_path)[case]
    status, _, err = run_cli(capsys, *argv)
    assert status == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err
    assert "Traceback" not in err
