"""End to end: `bounds compute --task lm` and `bounds verify --task lm` on tiny transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli

from bounds.models.architectures import byte_transformer
from bounds.pipeline.certify import certify_lm
from bounds.tasks.language.stdlib import stdlib_corpus
from bounds.tasks.language.tokens import load_tokens, save_tokens
from quantize import Code, product_grid
from quantize.opaque import OpaqueCode

VOCAB = 20
SHAPE = dict(context=32, width=16, depth=1, heads=2)
ARCH = (
    "bounds.models.architectures:byte_transformer:vocab_size=20,context=32,width=16,depth=1,heads=2"
)
BYTE_ARCH = "bounds.models.architectures:byte_transformer:context=32,width=16,depth=1,heads=2"


# Tiny models run fastest on one thread; several threads spin against each other.
pytestmark = pytest.mark.usefixtures("one_thread")


def documents(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, VOCAB - 1, size=int(n)) for n in rng.integers(3, 50, size=count)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A seeded model as a state dict, training and held-out token files with their offsets."""
    folder = tmp_path_factory.mktemp("lm")
    train = documents(0, 40)
    offsets = save_tokens(folder / "train.npy", train)
    test_offsets = save_tokens(folder / "test.npy", documents(1, 12))
    model = byte_transformer(VOCAB, seed=0, **SHAPE)
    torch.save(model.state_dict(), folder / "model.pt")
    return {
        "folder": folder,
        "model": folder / "model.pt",
        "data": folder / "train.npy",
        "offsets": offsets,
        "test": folder / "test.npy",
        "test_offsets": test_offsets,
        "documents": train,
    }


def lm_args(files, *extra, context: str = "32") -> list:
    return ["compute", files["model"], "--task", "lm", "--arch", ARCH, "--data", files["data"],
            "--offsets", files["offsets"], "--context", context, "--levels", "16", "-q",
            *extra]  # fmt: skip


@pytest.fixture(scope="module")
def computed(files):
    """compute once with --json and --save-code (and --top-k 1,5); the paths and stdout."""
    from cli.app import main

    folder = files["folder"]
    cert, code = folder / "cert.json", folder / "model.code"
    argv = lm_args(files, "--top-k", "1,5", "--format", "json", "--json", cert, "--save-code", code)
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    assert exit_info.value.code == 0
    return cert, code


def test_compute_gives_the_library_certificate(files, computed, capsys):
    cert_path, code_path = computed
    cert = json.loads(cert_path.read_text())
    corpus = load_tokens(files["data"], offsets=files["offsets"])
    expected = certify_lm(
        _load(files["model"]),
        corpus,
        context=32,
        top_k=(1, 5),
        grid=product_grid(levels=(16,), schemes=("kmeans",)),
        architecture=ARCH,
    )
    library = json.loads(expected.to_json())
    keys = ("task", "data", "train", "code", "bounds", "candidates", "prior", "grid", "claim")
    for key in keys:
        assert cert[key] == library[key], key
    assert cert["task"]["settings"]["top_k"] == [1, 5]
    assert cert["data"]["documents"] == 40
    assert cert["data"]["scored_tokens"] == sum(len(d) - 1 for d in files["documents"])
    assert set(cert["bounds"]) == {"bits", "top1", "top5"}
    assert cert["code"]["bits"] == sum(cert["code"]["breakdown"].values())
    assert code_path.read_bytes() == expected.code.to_bytes()


def _load(path) -> torch.nn.Module:
    model = byte_transformer(VOCAB, **SHAPE)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model


def verify_args(files, code, cert) -> list:
    return ["verify", code, "--task", "lm", "--arch", ARCH, "--data", files["data"],
            "--offsets", files["offsets"], "--certificate", cert, "-q"]  # fmt: skip


def test_verify_accepts_the_saved_code(files, computed, capsys):
    cert, code = computed
    status, out, err = run_cli(capsys, *verify_args(files, code, cert))
    assert status == 0, err
    assert out.strip().endswith("certificate: verified")
    assert "top5 token_bernstein bound" in out


def test_verify_rejects_a_tampered_certificate(files, computed, tmp_path, capsys):
    cert, code = computed
    claimed = json.loads(cert.read_text())
    claimed["bounds"]["bits"]["token_bernstein"]["value"] -= 0.01
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(claimed))
    status, out, err = run_cli(capsys, *verify_args(files, code, forged))
    assert status == 1
    assert err.startswith("mismatch: bits token_bernstein bound: certificate says")
    assert "certificate: MISMATCH" in out


def test_verify_rejects_a_corrupted_word(files, computed, tmp_path, capsys):
    cert, code = computed
    data = bytearray(code.read_bytes())
    data[len(data) // 2] ^= 0x04
    corrupted = tmp_path / "corrupted.code"
    corrupted.write_bytes(bytes(data))
    status, _, err = run_cli(capsys, *verify_args(files, corrupted, cert))
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1


def test_verify_takes_the_task_from_an_lm_certificate(files, computed, capsys):
    cert, code = computed
    status, out, err = run_cli(capsys, "verify", code, "--certificate", cert, "-q")
    assert status in (0, None), err
    assert "certificate: verified" in out
    status, _, err = run_cli(
        capsys, "verify", code, "--task", "classify", "--certificate", cert, "-q"
    )
    assert status == 2
    assert err == "error: the certificate is a language model's: pass --task lm\n"


def test_bin_stream_with_uint32_ids_and_an_end_of_document_id(files, tmp_path, capsys):
    eod = VOCAB - 1
    parts = [np.append(document, eod) for document in documents(2, 25)]
    np.concatenate(parts).astype("<u4").tofile(tmp_path / "stream.bin")
    argv = ["compute", files["model"], "--task", "lm", "--arch", ARCH,
            "--data", tmp_path / "stream.bin", "--token-dtype", "uint32", "--eod", str(eod),
            "--context", "32", "--levels", "8", "-q", "--format", "json"]  # fmt: skip
    status, out, err = run_cli(capsys, *argv)
    assert status == 0, err
    corpus = json.loads(out)["data"]
    assert corpus["documents"] == 25
    # The end-of-document id is each document's last token, and predicting it is scored.
    assert corpus["scored_tokens"] == sum(len(part) - 1 for part in parts)
    assert corpus["source"] == str(tmp_path / "stream.bin")


def test_stdlib_corpus_with_a_held_out_split(tmp_path, capsys):
    path = tmp_path / "byte.pt"
    torch.save(byte_transformer(seed=0, **SHAPE).state_dict(), path)
    spec = "stdlib:max_file_bytes=150"
    argv = ["compute", path, "--task", "lm", "--arch", BYTE_ARCH, "--data", spec,
            "--test-data", spec, "--context", "32", "--levels", "8", "-q",
            "--format", "json"]  # fmt: skip
    status, out, err = run_cli(capsys, *argv)
    assert status == 0, err
    cert = json.loads(out)
    train, test = stdlib_corpus(max_file_bytes=150), stdlib_corpus("test", max_file_bytes=150)
    assert cert["data"]["source"] == train.source
    assert cert["data"]["documents"] == train.num_documents
    assert cert["data"]["scored_tokens"] == train.scored_tokens
    assert cert["data"]["vocab_size"] == 257
    assert cert["test"]["summary"]["tokens"] == test.scored_tokens
    assert cert["test"]["summary"]["documents"] == test.num_documents
    assert set(cert["test"]["bounds"]) == {"bits", "top1"}


LOADER = '''
import torch

from bounds.models.architectures import byte_transformer


def load(path):
    """A byte_transformer from int8 values and one float scale per tensor."""
    packed = torch.load(path, weights_only=True)
    model = byte_transformer(20, context=32, width=16, depth=1, heads=2)
    model.load_state_dict(
        {name: packed[name + ".q"].float() * packed[name + ".scale"] for name in model.state_dict()}
    )
    return model
'''


def pack_int8(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    packed = {}
    for name, tensor in model.state_dict().items():
        scale = tensor.abs().max().clamp(min=1e-8) / 127
        packed[name + ".q"] = torch.round(tensor / scale).to(torch.int8)
        packed[name + ".scale"] = scale
    return packed


def test_code_file_with_a_loader(files, tmp_path, monkeypatch, capsys):
    loader_file = tmp_path / "int8_pack_loader.py"
    loader_file.write_text(LOADER)
    monkeypatch.syspath_prepend(str(tmp_path))
    packed = tmp_path / "packed.pt"
    torch.save(pack_int8(_load(files["model"])), packed)
    argv = ["compute", packed, "--code-file", "--loader", "int8_pack_loader:load", "--task", "lm",
            "--data", files["data"], "--offsets", files["offsets"], "--context", "32", "-q",
            "--format", "json", "--save-code", tmp_path / "packed.code"]  # fmt: skip
    status, out, err = run_cli(capsys, *argv)
    assert status == 0, err
    cert = json.loads(out)
    opaque = OpaqueCode.from_file(packed)
    assert cert["code"]["bits"] == opaque.bits
    assert cert["code"]["config"]["file_sha256"] == opaque.raw_sha256
    assert cert["candidates"] == [] and cert["grid"]["size"] == 0
    assert cert["prior"]["kind"] == "decoder"
    assert cert["prior"]["decoder"] == "loader int8_pack_loader:load"
    cert_path = tmp_path / "packed.json"
    cert_path.write_text(out)
    # verify decodes the word with the same loader and confirms every number.
    status, verified, err = run_cli(capsys, "verify", tmp_path / "packed.code", "--task", "lm",
                                    "--loader", "int8_pack_loader:load", "--data", files["data"],
                                    "--offsets", files["offsets"], "--certificate", cert_path,
                                    "-q")  # fmt: skip
    assert status == 0, err
    assert verified.strip().endswith("certificate: verified")
    # The decoder is part of the prior: another loader source is another prior.
    loader_file.write_text(LOADER + "\n# a comment changes the decoder's source\n")
    status, out, err = run_cli(capsys, *argv)
    assert status == 0, err
    changed = json.loads(out)
    assert changed["prior"]["fingerprint"] != cert["prior"]["fingerprint"]
    assert changed["code"] == cert["code"] and changed["bounds"] == cert["bounds"]


LORA = '''
import torch
from torch import nn

from bounds.models.architectures import byte_transformer


class LowRankAdapter(nn.Module):
    """A base LM plus a rank-r correction of its logits from the last token."""

    def __init__(self, base, rank):
        super().__init__()
        self.base = base
        self.lora_a = nn.Parameter(torch.zeros(20, rank))
        self.lora_b = nn.Parameter(torch.zeros(rank, 20))

    def forward(self, ids):
        return self.base(ids) + self.lora_a[ids] @ self.lora_b


def lora_transformer(rank=2):
    return LowRankAdapter(byte_transformer(20, context=32, width=16, depth=1, heads=2), rank)
'''


def test_base_prior_codes_only_the_adapter(files, tmp_path, monkeypatch, capsys):
    (tmp_path / "lora_lm.py").write_text(LORA)
    monkeypatch.syspath_prepend(str(tmp_path))
    import lora_lm

    model = lora_lm.lora_transformer()
    model.base.load_state_dict(_load(files["model"]).state_dict())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.lora_a.normal_(0, 0.3, generator=generator)
        model.lora_b.normal_(0, 0.3, generator=generator)
    state = model.state_dict()
    torch.save(state, tmp_path / "adapted.pt")
    torch.save({k: v for k, v in state.items() if k.startswith("base.")}, tmp_path / "base.pt")
    arch = "lora_lm:lora_transformer"
    argv = ["compute", tmp_path / "adapted.pt", "--arch", arch, "--prior",
            f"base:{tmp_path / 'base.pt'}", "--task", "lm", "--data", files["data"], "--offsets",
            files["offsets"], "--context", "32", "--levels", "8", "-q",
            "--format", "json"]  # fmt: skip
    code_path, cert_path = tmp_path / "adapter.code", tmp_path / "adapter.json"
    status, out, err = run_cli(capsys, *argv, "--save-code", code_path, "--json", cert_path)
    assert status == 0, err
    cert = json.loads(out)
    assert cert["prior"]["kind"] == "base" and cert["prior"]["name"] == "base.pt"
    assert cert["prior"]["coded_tensors"] == 2
    assert cert["prior"]["base_elements"] == sum(p.numel() for p in model.base.parameters())
    assert cert["code"]["bits"] < 600  # 80 adapter numbers; the base costs nothing
    # The word decodes to the adapter tensors only.
    from cli.specs import load_prior

    skeleton, _ = load_prior(
        f"base:{tmp_path / 'base.pt'}", arch, lora_lm.lora_transformer(), rebuild=True
    )
    prior = skeleton.prior()
    assert sorted(Code.load(code_path, prior).decode(prior)) == ["model.lora_a", "model.lora_b"]
    status, verified, err = run_cli(capsys, "verify", code_path, "--task", "lm", "--arch", arch,
                                    "--prior", f"base:{tmp_path / 'base.pt'}", "--data",
                                    files["data"], "--offsets", files["offsets"], "--certificate",
                                    cert_path, "-q")  # fmt: skip
    assert status == 0, err
    assert verified.strip().endswith("certificate: verified")
    # A base tensor that changed is not a frozen base: refused, with the way out named.
    state["base.head.weight"] = state["base.head.weight"] + 0.01
    torch.save(state, tmp_path / "changed.pt")
    argv[1] = tmp_path / "changed.pt"
    status, _, err = run_cli(capsys, *argv)
    assert status == 2
    assert "1 base tensors differ in the model (first: 'base.head.weight')" in err
    assert "--prior FILE" in err and err.count("\n") == 1


def bad_inputs(files, tmp_path) -> dict[str, tuple[list, str]]:
    base = lm_args(files)
    stdlib = ["compute", files["model"], "--task", "lm", "--arch", ARCH, "-q"]
    return {
        "missing token file": (
            [
                "compute",
                files["model"],
                "--task",
                "lm",
                "--arch",
                ARCH,
                "--data",
                tmp_path / "none.npy",
            ],
            "token file",
        ),  # fmt: skip
        "alphas not numbers": ([*base, "--alphas", "0.5,x"], "--alphas must be comma-separated"),
        "alpha outside (0, 1)": ([*base, "--alphas", "0.5,1.5"], "strictly in (0, 1)"),
        "qat with lm": ([*base, "--qat-epochs", "1"], "--qat-epochs is for classifiers"),
        "loader without code file": ([*base, "--loader", "x:y"], "pass --code-file"),
        "code file with prior": ([*base, "--code-file", "--prior", "init:0"], "has no --prior"),
        "top-k zero": ([*base, "--top-k", "0"], "top_k must be a positive integer"),
        "top-k not numbers": ([*base, "--top-k", "1,a"], "--top-k must be comma-separated"),
        "stride above context": ([*base, "--stride", "33"], "stride must not exceed context"),
        "context beyond the model": (
            lm_args(files, context="64"),
            "exceed the context of 32",
        ),
        "offsets with stdlib": (
            [*stdlib, "--offsets", files["offsets"]],
            "--offsets describe a token file",
        ),
        "test stream without its offsets": (
            [*base, "--test-data", files["test"]],
            "give --test-offsets",
        ),
        "lm option with classify": (
            ["compute", files["model"], "--arch", ARCH, "--subsample", "5"],
            "--subsample apply to --task lm only",
        ),
        "subsample zero": ([*base, "--subsample", "0"], "subsample size must be a positive"),
        "token dtype": ([*base, "--token-dtype", "int8"], "dtype must be one of"),
        "verify lm without certificate": (
            ["verify", files["model"], "--task", "lm", "--arch", ARCH, "--data", files["data"]],
            "--task lm needs --certificate",
        ),
    }


CASES = [
    "missing token file", "alphas not numbers", "alpha outside (0, 1)", "qat with lm",
    "loader without code file", "code file with prior", "top-k zero", "top-k not numbers",
    "stride above context", "context beyond the model", "offsets with stdlib",
    "test stream without its offsets", "lm option with classify", "subsample zero",
    "token dtype", "verify lm without certificate",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_2(case, files, tmp_path, capsys):
    argv, message = bad_inputs(files, tmp_path)[case]
    status, _, err = run_cli(capsys, *argv)
    assert status == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err
    assert "Traceback" not in err


def test_held_out_stream_with_its_own_offsets(files, capsys):
    argv = lm_args(files, "--test-data", files["test"], "--test-offsets", files["test_offsets"],
                   "--format", "json")  # fmt: skip
    status, out, err = run_cli(capsys, *argv)
    assert status == 0, err
    summary = json.loads(out)["test"]["summary"]
    assert summary["documents"] == 12
    assert summary["tokens"] == sum(len(d) - 1 for d in documents(1, 12))


STUDENT = (
    "bounds.models.architectures:byte_transformer:vocab_size=20,context=16,width=8,depth=1,heads=2"
)


@pytest.fixture(scope="module")
def requential_lm(files):
    """compute once: the seeded model as the teacher of a requential student (start token 19,
    two sequence counts), writing the certificate, the word and the student checkpoint."""
    cert, code = files["folder"] / "requential.json", files["folder"] / "requential.code"
    argv = ["compute", files["model"], "--task", "lm", "--arch", ARCH, "--data", files["data"],
            "--offsets", files["offsets"], "--context", "16", "--code", "requential",
            "--student-arch", STUDENT, "--labels", "8,16", "--start-token", "19",
            "--json", cert, "--save-code", code, "--format", "json", "-q"]  # fmt: skip
    return argv, cert, code


def test_requential_lm_compute_and_verify(requential_lm, files, capsys):
    argv, cert, code = requential_lm
    status, out, err = run_cli(capsys, *argv)
    assert status == 0, err
    certificate = json.loads(cert.read_text())
    assert certificate["prior"]["kind"] == "requential-lm"
    assert (
        certificate["prior"]["start_token"] == 19 and certificate["prior"]["sequence_length"] == 16
    )
    assert certificate["code"]["config"]["sequences"] in (8, 16)
    assert certificate["code"]["bits"] == certificate["code"]["breakdown"]["payload"] + sum(
        v for k, v in certificate["code"]["breakdown"].items() if k != "payload"
    )
    from cli.specs import requential_from_certificate
    from quantize.requential import RequentialCode

    family = requential_from_certificate(certificate["prior"])
    decoded = RequentialCode.from_bytes(code.read_bytes(), family.prior)
    saved = torch.load(code.with_suffix(".student.pt"), weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in decoded.student.state_dict().items())
    verify = ["verify", code, "--certificate", cert, "--data", files["data"], "--offsets",
              files["offsets"], "-q"]  # fmt: skip
    status, out, err = run_cli(capsys, *verify)
    assert status == 0 and "certificate: verified" in out, err
    # A flipped bit of the word, or another start token in the claim: refused, one line.
    word = bytearray(code.read_bytes())
    word[len(word) // 2] ^= 0x10
    flipped = files["folder"] / "flipped.code"
    flipped.write_bytes(bytes(word))
    status, _, err = run_cli(capsys, *verify[:1], flipped, *verify[2:])
    assert status != 0 and err.startswith("error: ") and err.count("\n") == 1
    certificate["prior"]["start_token"] = 18
    edited = files["folder"] / "edited.json"
    edited.write_text(json.dumps(certificate))
    status, _, err = run_cli(capsys, *verify[:3], edited, *verify[4:])
    assert status != 0 and "another fingerprint" in err
