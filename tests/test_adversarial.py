"""An adversary's model files, in every format the tool accepts.

The training labels are uniform and independent of the inputs, so every model's true error is
0.9 (and a causal language model on uniform tokens cannot beat ln V nats per token). A
memorizer has no training errors; each file below must either be refused with exit 2 and one
line, or certified at a bound no lower than its held-out error. `bounds verify` must reject a
certificate whose numbers are not those of the model the word and the prior decode to.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from adversary import Memorizer, memorize, memorizer, peeking_lm, random_labels
from conftest import run_cli

import bounds
from bounds.tasks.language.tokens import save_tokens
from quantize import Subspace

N, M = 1000, 300
FAST = ["--levels", "4", "--schemes", "kmeans", "-q"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Random-label training and held-out sets as .npz specs, and the training tensors."""
    folder = tmp_path_factory.mktemp("adversary")
    specs = {}
    for name, size, seed in (("train", N, 0), ("test", M, 1)):
        x, y = random_labels(size, seed)
        np.savez(folder / f"{name}.npz", x=x, y=y)
        specs[name] = str(folder / f"{name}.npz")
    x, y = random_labels(N, 0)
    return specs, torch.from_numpy(x), torch.from_numpy(y)


def trained(data, place: str) -> Memorizer:
    _, x, y = data
    return memorize(memorizer(N, place), x, y)


def compute(capsys, data, model_path, *extra) -> tuple[int, dict | None, str]:
    specs, _, _ = data
    status, out, err = run_cli(
        capsys,
        "compute",
        model_path,
        "--data",
        specs["train"],
        "--test-data",
        specs["test"],
        "--format",
        "json",
        *FAST,
        *extra,
    )
    return status, (json.loads(out) if status in (0, None) else None), err


def assert_refused(status: int, err: str, *phrases: str) -> None:
    assert status == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    for phrase in phrases:
        assert phrase in err.replace("\n", " "), err


def assert_bounded(certificate: dict) -> None:
    """The certified bound is not below the held-out error (true error 0.9)."""
    held_out = certificate["test"]["summary"]
    test_error = held_out["errors"] / held_out["n"]
    assert held_out["n"] == M and held_out["losses"] == {"error": test_error}
    assert test_error > 0.8  # the memorizer does not generalize
    assert list(certificate["bounds"]) == ["error"] and certificate["bounds"]["error"]
    for bound in certificate["bounds"]["error"].values():
        assert bound["value"] >= test_error, bound
    assert certificate["test"]["bounds"]["error"]["value"] >= test_error


def test_the_memorizer_memorizes(data):
    _, x, y = data
    for place in ("buffer", "nonpersistent", "attribute", "parameter"):
        model = trained(data, place)
        assert (model(x).argmax(1) == y).all()


@pytest.mark.parametrize("place", ["nonpersistent", "buffer"])
def test_a_state_dict_carries_only_what_is_coded(place, data, tmp_path, capsys):
    path = tmp_path / "memorizer.pt"
    torch.save(trained(data, place).state_dict(), path)
    status, certificate, err = compute(
        capsys, data, path, "--arch", f"adversary:memorizer:size={N},place={place!r}"
    )
    assert status in (0, None), err
    assert_bounded(certificate)
    if place == "nonpersistent":  # the memory is not in the file: the decoded model is empty
        assert certificate["train"]["decoded"]["losses"]["error"] > 0.8
    else:  # the memory is coded, and K pays for it
        assert certificate["code"]["bits"] > N * 10


def test_a_safetensors_file_carries_only_what_is_coded(data, tmp_path, capsys):
    from safetensors.torch import save_file

    path = tmp_path / "memorizer.safetensors"
    save_file(trained(data, "buffer").state_dict(), path)
    status, certificate, err = compute(
        capsys, data, path, "--arch", f"adversary:memorizer:size={N}"
    )
    assert status in (0, None), err
    assert_bounded(certificate)


def test_torchscript_is_refused_unless_the_whole_file_is_the_word(data, tmp_path, capsys):
    path = tmp_path / "memorizer.ts"
    torch.jit.script(trained(data, "attribute")).save(str(path))
    status, _, err = compute(capsys, data, path)
    assert_refused(status, err, "TorchScript", "--code-file")
    status, certificate, err = compute(capsys, data, path, "--code-file")
    assert status in (0, None), err
    assert certificate["code"]["bits"] >= 8 * path.stat().st_size // 2  # zstd of random floats
    assert_bounded(certificate)


def test_a_pickled_module_is_refused_unless_the_whole_file_is_the_word(data, tmp_path, capsys):
    path = tmp_path / "memorizer.pt"
    torch.save(trained(data, "attribute"), path)
    status, _, err = compute(capsys, data, path, "--trust-pickle")
    assert_refused(status, err, "pickled module", "--code-file")
    status, certificate, err = compute(capsys, data, path, "--trust-pickle", "--code-file")
    assert status in (0, None), err
    assert_bounded(certificate)


def test_an_opaque_file_pays_for_every_byte(data, tmp_path, capsys):
    path = tmp_path / "memorizer.bin"
    torch.save(trained(data, "buffer").state_dict(), path)
    status, certificate, err = compute(
        capsys, data, path, "--code-file", "--loader", "adversary:load_whole"
    )
    assert status in (0, None), err
    assert certificate["code"]["bits"] > 8 * N * 40  # the keys alone
    assert_bounded(certificate)


def _subspace_with_memory_in_theta0(data, init_seed):
    """d = 1 coordinate trained; the memory sits in θ0, which the file claims as the prior."""
    torch.manual_seed(0)
    network = trained(data, "parameter")
    metadata = {"arch": "adversary:memorizer", "arch_kwargs": {"size": N, "place": "parameter"}}
    return Subspace(network, 1, seed=0, init_seed=init_seed, metadata=metadata)


@pytest.mark.parametrize("init_seed", [0, None])
def test_a_subspace_theta0_must_be_the_declared_initialization(init_seed, data, tmp_path, capsys):
    path = tmp_path / "subspace.pt"
    _subspace_with_memory_in_theta0(data, init_seed).save(path)
    status, _, err = compute(capsys, data, path)
    if init_seed is None:
        assert_refused(status, err, "init_seed", "re-derived")
    else:
        assert_refused(status, err, "θ0", "init_seed 0")


def test_an_honest_subspace_checkpoint_is_certified(data, tmp_path, capsys):
    torch.manual_seed(5)
    network = memorizer(N, "parameter")
    metadata = {"arch": "adversary:memorizer", "arch_kwargs": {"size": N, "place": "parameter"}}
    subspace = Subspace(network, 4, seed=1, init_seed=5, metadata=metadata)
    path = tmp_path / "honest.pt"
    subspace.save(path)
    status, certificate, err = compute(capsys, data, path)
    assert status in (0, None), err
    assert certificate["prior"]["kind"] == "subspace" and certificate["prior"]["init_seed"] == 5
    assert certificate["prior"]["architecture"]["spec"].startswith("adversary:memorizer")
    assert_bounded(certificate)


def test_the_library_builds_the_decoded_model_from_the_architecture(data):
    specs, _, _ = data
    from cli.specs import load_data

    model = trained(data, "attribute")
    train, test = load_data(specs["train"]), load_data(specs["test"])
    with pytest.raises(ValueError, match="architecture of the Memorizer is not declared"):
        bounds.certify(model, train, grid=[{"levels": 4}])
    certificate = bounds.certify(
        model,
        train,
        test_data=test,
        grid=[{"levels": 4}],
        architecture=lambda: memorizer(N, "attribute"),
    )
    assert certificate.train["float"]["errors"] == 0  # the trained object memorizes ...
    assert certificate.train["decoded"]["losses"]["error"] > 0.8  # ... the decoded one has none
    assert certificate.best.value >= certificate.test["summary"]["losses"]["error"]
    with pytest.raises(ValueError, match="instead of a new one"):
        bounds.certify(model, train, grid=[{"levels": 4}], architecture=lambda: model)


TINY_GPT2 = {"vocab_size": 61, "n_positions": 32, "n_embd": 16, "n_layer": 1, "n_head": 2}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """Uniform random tokens over 61 ids: no causal model beats log2 61 bits per token."""
    folder = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(7)
    paths = {}
    for name, count in (("train", 40), ("test", 15)):
        documents = [rng.integers(0, 61, size=int(k)) for k in rng.integers(10, 60, size=count)]
        paths[name] = (folder / f"{name}.npy", save_tokens(folder / f"{name}.npy", documents))
    return paths


def lm_compute(capsys, tokens, model_path, *extra):
    (train, offsets), (test, test_offsets) = tokens["train"], tokens["test"]
    return run_cli(
        capsys,
        "compute",
        model_path,
        "--task",
        "lm",
        "--data",
        train,
        "--offsets",
        offsets,
        "--test-data",
        test,
        "--test-offsets",
        test_offsets,
        "--context",
        "32",
        "--levels",
        "16",
        "--format",
        "json",
        "-q",
        *extra,
    )


def test_a_language_model_that_reads_ahead_is_refused(tokens, tmp_path, capsys):
    path = tmp_path / "peeking.pt"
    torch.save(peeking_lm(61).state_dict(), path)
    status, _, err = lm_compute(capsys, tokens, path, "--arch", "adversary:peeking_lm")
    assert_refused(status, err, "not causal")


def test_a_hugging_face_directory_is_rebuilt_from_its_config(tokens, tmp_path, capsys):
    from bounds.models.hf import causal_lm

    directory = tmp_path / "tiny"
    causal_lm("gpt2", seed=0, **TINY_GPT2).save_pretrained(directory)
    status, out, err = lm_compute(capsys, tokens, directory)
    assert status in (0, None), err
    certificate = json.loads(out)
    assert certificate["prior"]["architecture"]["spec"] == "hf:gpt2"
    held_out = certificate["test"]["summary"]
    assert certificate["bounds"]["bits"]["token_bernstein"]["value"] >= held_out["bits"]
    assert certificate["bounds"]["top1"]["token_azuma"]["value"] >= held_out["top_k_error"]["1"]
    # A directory whose config asks for code of its own is refused, not run.
    config = json.loads((directory / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_memorizer.Memorizer"}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "modeling_memorizer.py").write_text("raise SystemExit('ran code from the file')\n")
    status, _, err = lm_compute(capsys, tokens, directory)
    assert_refused(status, err, "auto_map")


@pytest.fixture(scope="module")
def honest(data, tmp_path_factory):
    """A certificate and code word for a state-dict memorizer (non-persistent memory)."""
    folder = tmp_path_factory.mktemp("verify")
    specs, _, _ = data
    model_path, cert, code = folder / "model.pt", folder / "cert.json", folder / "word.code"
    torch.save(trained(data, "nonpersistent").state_dict(), model_path)
    from cli.app import main

    arch = f"adversary:memorizer:size={N},place='nonpersistent'"
    argv = [
        "compute",
        model_path,
        "--arch",
        arch,
        "--data",
        specs["train"],
        "--json",
        cert,
        "--save-code",
        code,
        *FAST,
    ]
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    assert exit_info.value.code in (0, None)
    return model_path, arch, cert, code


def test_verify_rejects_a_certificate_the_word_does_not_support(honest, data, tmp_path, capsys):
    model_path, arch, cert, code = honest
    specs, _, _ = data
    common = ["--arch", arch, "--data", specs["train"], "-q"]
    status, out, err = run_cli(capsys, "verify", code, "--certificate", cert, *common)
    assert status in (0, None), err
    # A certificate claiming the trained memorizer's errors (none) for this word.
    forged = json.loads(cert.read_text())
    forged["train"]["decoded"]["errors"] = 0
    forged["train"]["decoded"]["losses"]["error"] = 0.0
    for method, row in forged["bounds"]["error"].items():
        row["value"] = bounds.occam_bound(
            N, forged["code"]["bits"], 0.05, errors=0, method=method
        ).value
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    status, _, err = run_cli(
        capsys, "verify", code, "--certificate", tmp_path / "forged.json", *common
    )
    assert status == 1 and "mismatch: decoded errors:" in err
    # Another word under the same certificate.
    word = bytearray(code.read_bytes())
    word[-1] ^= 0x01
    (tmp_path / "flipped.code").write_bytes(bytes(word))
    status, _, err = run_cli(
        capsys, "verify", tmp_path / "flipped.code", "--certificate", cert, *common
    )
    assert status in (1, 2) and "Traceback" not in err
    # The model file's trained state is never used: a memorizer file verifies the same word.
    memory_file = tmp_path / "scripted.ts"
    torch.jit.script(trained(data, "attribute")).save(str(memory_file))
    status, _, err = run_cli(
        capsys, "verify", code, "--certificate", cert, "--model", memory_file, *common
    )
    assert_refused(status, err, "TorchScript")
