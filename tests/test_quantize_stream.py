"""Tests of streaming compression of safetensors checkpoints (single files and shards)."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from quantize import Code, compress
from quantize import stream as stream_module
from quantize.code import work_dtype
from quantize.quantizers import assign, thresholds
from quantize.safetensors_reader import checkpoint_tensors, read_tensor, value_chunks
from quantize.stream import compress_safetensors
from quantize.word import PARTS


@pytest.fixture(autouse=True)
def _small_reads(monkeypatch):
    # reads of 64 elements, so that every pass crosses chunk boundaries on these small tensors
    monkeypatch.setattr(stream_module, "READ_CHUNK", 64)


def _state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return {
        "layer.1.weight": torch.randn(40, 50, generator=generator) * 0.02,
        "layer.0.weight": torch.randn(700, generator=generator).half(),
        "layer.0.bias": (torch.randn(33, 3, generator=generator) * 0.1).bfloat16(),
        "head.weight": torch.randn(30, generator=generator).double(),
        "norm.scale": torch.full((9,), 0.5),
        "positions": torch.arange(-3, 120),
        "mask": torch.rand(12, generator=generator) > 0.5,
        "unused": torch.zeros(0, 4),
    }


def _in_name_order(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: state[name] for name in sorted(state)}


@pytest.fixture()
def checkpoint(tmp_path):
    state = _state()
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    return path, state


def _shard(tmp_path, state: dict[str, torch.Tensor], parts: list[list[str]]):
    """Write ``state`` as shards holding the names of each part, and their index."""
    folder = tmp_path / "sharded"
    folder.mkdir()
    weight_map = {}
    for number, names in enumerate(parts):
        shard = f"model-{number + 1:05d}-of-{len(parts):05d}.safetensors"
        save_file({name: state[name] for name in names}, str(folder / shard))
        weight_map.update(dict.fromkeys(names, shard))
    text = json.dumps({"metadata": {}, "weight_map": weight_map})
    (folder / "model.safetensors.index.json").write_text(text)
    return folder


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return a.numel() == 0 or torch.equal(
        a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)
    )


# --- reading -------------------------------------------------------------------------------------


def test_the_reader_returns_every_tensor_in_name_order_with_exact_values(checkpoint):
    path, state = checkpoint
    tensors = checkpoint_tensors(path)
    assert [tensor.spec.name for tensor in tensors] == sorted(state)
    for tensor in tensors:
        original = state[tensor.spec.name]
        assert (tensor.spec.shape, tensor.spec.dtype) == (tuple(original.shape), original.dtype)
        if tensor.spec.is_floating:
            values = np.zeros(tensor.spec.numel, dtype=np.float64)
            for start, chunk in value_chunks(tensor, 17):
                values[start : start + chunk.shape[0]] = chunk
            expected = original.reshape(-1).to(work_dtype(original.dtype)).double().numpy()
            np.testing.assert_array_equal(values, expected)
        else:
            assert _bits_equal(read_tensor(tensor), original)


# --- the code word -------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["kmeans", "uniform"])
def test_the_word_decodes_to_the_nearest_stored_level_of_every_value(checkpoint, scheme):
    path, state = checkpoint
    result = compress_safetensors(path, scheme=scheme, sample_size=100, seed=3)
    word = result.code.to_bytes()
    decoded = Code.from_bytes(word, prior=None).decode()
    assert list(decoded) == sorted(state)
    groups = {result.code.layout[group.members[0]].name: group for group in result.code.groups}
    floating = {"head.weight", "layer.0.bias", "layer.0.weight", "layer.1.weight", "norm.scale"}
    assert set(groups) == floating
    for name, original in state.items():
        if name not in groups:  # integer, bool and empty tensors: lossless
            assert _bits_equal(decoded[name], original)
            continue
        codebook = groups[name].codebook
        work = work_dtype(original.dtype)
        values = original.reshape(-1).to(work).numpy()
        symbols = assign(values, thresholds(codebook, values.dtype), np.int64)
        levels = torch.from_numpy(codebook).to(work)
        assert _bits_equal(
            decoded[name],
            levels[torch.from_numpy(symbols)].to(original.dtype).reshape(original.shape),
        )
        # the level is the nearest one: within half the largest gap inside the codebook's range
        error = np.abs(levels.numpy()[symbols].astype(np.float64) - values)
        outside = np.maximum(codebook[0] - values, values - codebook[-1]).clip(min=0)
        half_gap = np.diff(codebook).max(initial=0.0) / 2
        assert (error <= np.maximum(half_gap, outside) * (1 + 1e-12)).all()
    assert len(groups["norm.scale"].codebook) == 1  # a constant tensor is one stored level


@pytest.mark.parametrize(
    ("scheme", "levels", "coder", "precision"),
    [
        ("uniform", 16, "auto", "float16"),
        ("kmeans", 16, "auto", "float16"),
        ("uniform", 300, "range", "float32"),
        ("kmeans", 5, "zstd", "bfloat16"),
    ],
)
def test_the_word_equals_compress_by_tensor_when_every_value_is_used(
    checkpoint, scheme, levels, coder, precision
):
    path, state = checkpoint
    options = {"levels": levels, "scheme": scheme, "coder": coder, "precision": precision}
    streamed = compress_safetensors(path, sample_size=10_000, **options)
    reference = compress(_in_name_order(state), groups="tensor", **options)
    assert streamed.code.to_bytes() == reference.to_bytes()
    assert streamed.code.config == reference.config


def test_sampled_kmeans_fits_on_the_sample_and_depends_on_the_seed(checkpoint):
    path, state = checkpoint
    first = compress_safetensors(path, sample_size=64, seed=0)
    again = compress_safetensors(path, sample_size=64, seed=0)
    other = compress_safetensors(path, sample_size=64, seed=1)
    assert first.code.to_bytes() == again.code.to_bytes()
    assert first.code.to_bytes() != other.code.to_bytes()
    fitted = {stats.name: stats.fitted_on for stats in first.tensors}
    assert fitted == {
        "head.weight": 30,
        "layer.0.bias": 64,
        "layer.0.weight": 64,
        "layer.1.weight": 64,
        "mask": 0,
        "norm.scale": 9,
        "positions": 0,
        "unused": 0,
    }


def test_the_kmeans_sample_is_the_documented_seeded_draw_with_replacement(tmp_path):
    path = tmp_path / "ramp.safetensors"
    save_file({"ramp": torch.arange(1000, dtype=torch.float32).reshape(10, 100)}, str(path))
    (tensor,) = checkpoint_tensors(path)
    key = int.from_bytes(hashlib.sha256(b"ramp").digest()[:8], "little")
    drawn = np.random.default_rng([5, key]).integers(0, 1000, size=300)
    np.testing.assert_array_equal(stream_module._kmeans_sample(tensor, 300, 5), np.sort(drawn))
    whole = stream_module._kmeans_sample(tensor, 1000, 5)
    np.testing.assert_array_equal(whole, np.arange(1000, dtype=np.float32))


def test_a_sharded_checkpoint_gives_the_word_of_the_single_file(checkpoint, tmp_path):
    path, state = checkpoint
    parts = [
        ["layer.1.weight", "positions", "mask"],
        [n for n in state if n not in {"layer.1.weight", "positions", "mask"}],
    ]
    folder = _shard(tmp_path, state, parts)
    single = compress_safetensors(path, sample_size=100).code.to_bytes()
    assert (
        compress_safetensors(
            folder / "model.safetensors.index.json", sample_size=100
        ).code.to_bytes()
        == single
    )
    assert compress_safetensors(folder, sample_size=100).code.to_bytes() == single
    (folder / "model.safetensors.index.json").unlink()  # a folder of shards without an index
    assert compress_safetensors(folder, sample_size=100).code.to_bytes() == single


def test_stats_account_for_every_bit_and_the_range_coder_reaches_the_entropy(tmp_path):
    generator = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(200, 250, generator=generator), "steps": torch.tensor([5, 9])}
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    calls = []
    result = compress_safetensors(
        path,
        coder="range",
        progress=lambda done, total, stats: calls.append((done, total, stats.name)),
    )
    assert calls == [(1, 2, "steps"), (2, 2, "w")]
    code = result.code
    outside = sum(
        code.breakdown[part] for part in ("header", "config_choice", "layout", "checksum")
    )
    assert sum(stats.bits for stats in result.tensors) == code.bits - outside
    weights = result.tensors[1]
    assert (weights.coder, weights.levels, weights.fitted_on) == ("range/counts", 16, 50_000)
    assert weights.payload_bits == code.breakdown["payload"]
    assert 1.0 <= weights.payload_bits / weights.entropy_bits < 1.001
    counts = code.groups[0].model.counts
    entropy = -float((counts * np.log2(counts / counts.sum())).sum())
    assert math.isclose(weights.entropy_bits, entropy, rel_tol=1e-12)
    assert set(code.breakdown) == set(PARTS)


def test_out_receives_the_word(checkpoint, tmp_path):
    path, _ = checkpoint
    target = tmp_path / "word.bin"
    result = compress_safetensors(path, out=target)
    assert target.read_bytes() == result.code.to_bytes()
    loaded = Code.load(target).decode()
    for name, tensor in result.code.decode().items():
        assert _bits_equal(loaded[name], tensor)


# --- bad input -----------------------------------------------------------------------------------


def test_bad_arguments_raise_value_errors(checkpoint):
    path, _ = checkpoint
    for options, message in (
        ({"levels": 0}, "levels"),
        ({"scheme": "median"}, "scheme"),
        ({"sample_size": 0}, "sample_size"),
        ({"sample_size": 2.5}, "sample_size"),
        ({"seed": -1}, "seed"),
    ):
        with pytest.raises(ValueError, match=message):
            compress_safetensors(path, **options)


def test_missing_or_malformed_files_raise_value_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        compress_safetensors(tmp_path / "absent.safetensors")
    text = tmp_path / "notes.safetensors"
    text.write_text("these are not tensors")
    with pytest.raises(ValueError, match="not a safetensors file"):
        compress_safetensors(text)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    with pytest.raises(ValueError, match="do not fit its shape or the file"):
        compress_safetensors(truncated)
    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    with pytest.raises(ValueError, match="holds no .safetensors file"):
        compress_safetensors(empty_folder)


def test_unsupported_dtypes_and_bad_bools_raise_value_errors(tmp_path):
    path = tmp_path / "u16.safetensors"
    save_file({"w": torch.zeros(3, dtype=torch.uint16)}, str(path))
    with pytest.raises(ValueError, match="dtype 'U16'"):
        compress_safetensors(path)
    header = json.dumps({"m": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}}).encode()
    bools = tmp_path / "bools.safetensors"
    bools.write_bytes(len(header).to_bytes(8, "little") + header + bytes([1, 7]))
    with pytest.raises(ValueError, match="other than 0 and 1"):
        compress_safetensors(bools)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_raise_a_value_error(tmp_path, value):
    weights = torch.randn(500).half()
    weights[321] = value
    path = tmp_path / "bad.safetensors"
    save_file({"w": weights}, str(path))
    for scheme in ("kmeans", "uniform"):
        with pytest.raises(ValueError, match="tensor 'w' has NaN or infinite values"):
            compress_safetensors(path, scheme=scheme, sample_size=10)


def test_an_index_that_does_not_match_its_shards_raises_a_value_error(checkpoint, tmp_path):
    _, state = checkpoint
    names = sorted(state)
    folder = _shard(tmp_path, state, [names[:3], names[3:]])
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())

    def check(weight_map, message):
        index_path.write_text(json.dumps({"weight_map": weight_map}))
        with pytest.raises(ValueError, match=message):
            compress_safetensors(index_path)

    check({**index["weight_map"], names[0]: "missing.safetensors"}, "which does not exist")
    check({**index["weight_map"], "extra": "model-00001-of-00002.safetensors"}, "does not hold")
    check({k: v for k, v in index["weight_map"].items() if k != names[0]}, "does not list")
    check([], "weight_map")
    index_path.write_text("{not json")
    with pytest.raises(ValueError, match="weight_map"):
        compress_safetensors(index_path)
    (folder / "second.safetensors.index.json").write_text("{}")
    with pytest.raises(ValueError, match="several index files"):
        compress_safetensors(folder)


def test_a_tensor_in_two_files_raises_a_value_error(tmp_path):
    folder = tmp_path / "twice"
    folder.mkdir()
    for name in ("a", "b"):
        save_file({"w": torch.ones(2)}, str(folder / f"{name}.safetensors"))
    with pytest.raises(ValueError, match="tensor 'w' is in both"):
        compress_safetensors(folder)
