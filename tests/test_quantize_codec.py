"""Tests of the code word: bit I/O, quantizers, round trips, exact lengths, corruption."""

from __future__ import annotations

import math
import time
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantize import Code, CodeError, ReferencePrior, Subspace, compress
from quantize.bitio import BitReader, BitWriter, delta_bits, gamma_bits, unzigzag, zigzag
from quantize.quantizers import assign, kmeans_codebook, thresholds
from quantize.word import PARTS

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Bitwise equality of two state dicts (same keys in the same order)."""
    if list(a) != list(b):
        return False
    for name in a:
        x, y = a[name], b[name]
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if x.dtype == torch.bool:
            x, y = x.to(torch.uint8), y.to(torch.uint8)
        if x.numel() and not torch.equal(
            x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)
        ):
            return False
    return True


def _small_model() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return {
        "fc1.weight": torch.randn(6, 4, generator=generator),
        "fc1.bias": torch.randn(6, generator=generator),
        "bn.num_batches_tracked": torch.tensor(17),
    }


# --- bit I/O -------------------------------------------------------------------------------------


@given(st.lists(st.integers(1, 2**64 - 1), min_size=1, max_size=30))
@settings(deadline=None)
def test_elias_codes_round_trip_with_their_exact_lengths(values):
    writer = BitWriter()
    for value in values:
        writer.write_gamma(value)
        writer.write_delta(value)
    assert writer.bits == sum(gamma_bits(v) + delta_bits(v) for v in values)
    reader = BitReader(writer.getvalue())
    for value in values:
        assert reader.read_gamma() == value
        assert reader.read_delta() == value
    assert reader.pos == writer.bits


def test_elias_lengths_match_the_textbook_values():
    assert [gamma_bits(x) for x in (1, 2, 3, 4, 255)] == [1, 3, 3, 5, 15]
    assert [delta_bits(x) for x in (1, 2, 3, 4, 16)] == [1, 4, 4, 5, 9]
    assert [zigzag(x) for x in (0, -1, 1, -2, 2)] == [0, 1, 2, 3, 4]
    assert all(unzigzag(zigzag(x)) == x for x in range(-300, 300))


@given(st.integers(0, 15), st.binary(min_size=0, max_size=40), st.data())
@settings(deadline=None)
def test_bit_strings_round_trip_at_any_offset(offset, data, draw):
    nbits = draw.draw(st.integers(0, 8 * len(data)))
    writer = BitWriter()
    writer.write((1 << offset) - 1, offset)
    writer.write_bits(data, nbits)
    writer.write(5, 3)
    reader = BitReader(writer.getvalue())
    assert reader.read(offset) == (1 << offset) - 1
    got = reader.read_bits(nbits)
    assert reader.read(3) == 5
    expected = BitReader(data).read_bits(nbits) if nbits else b""
    assert got == expected


def test_reader_reports_truncation_with_context():
    reader = BitReader(b"\x01")
    reader.context = "the codebook of group 'fc1.weight'"
    with pytest.raises(CodeError, match=r"truncated: needed 4 more bits reading the codebook"):
        reader.read(12)
    with pytest.raises(CodeError, match="truncated"):
        BitReader(b"\x00\x00").read_gamma()
    with pytest.raises(CodeError, match="too long"):
        BitReader(bytes(20)).read_gamma()


# --- quantizers ----------------------------------------------------------------------------------


def _reference_lloyd(values: np.ndarray, levels: int) -> np.ndarray:
    """Textbook Lloyd from the same quantile start, by brute-force assignment."""
    data = np.sort(values.astype(np.float64))
    centroids = np.unique(data[((np.arange(levels) + 0.5) * len(data) / levels).astype(int)])
    for _ in range(1000):
        nearest = np.argmin(np.abs(data[:, None] - centroids[None, :]), axis=1)
        updated = np.array([data[nearest == j].mean() for j in range(len(centroids))])
        if np.array_equal(updated, centroids):
            break
        centroids = updated
    return centroids


@pytest.mark.parametrize("levels", [1, 2, 5, 16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_matches_textbook_lloyd(levels, seed):
    values = np.random.default_rng(seed).standard_normal(3000).astype(np.float32)
    got = kmeans_codebook(np.sort(values), levels)
    np.testing.assert_allclose(got, _reference_lloyd(values, levels), rtol=1e-9, atol=1e-12)


def test_kmeans_is_a_lloyd_fixed_point_with_all_levels_used():
    values = np.concatenate([np.zeros(5000), np.random.default_rng(4).standard_normal(500)])
    values = np.sort(values.astype(np.float32))  # a heavy atom at zero: quantiles repeat
    centroids = kmeans_codebook(values, 8)
    assert len(centroids) == 8 and (np.diff(centroids) > 0).all()
    nearest = assign(values, thresholds(centroids, values.dtype), np.dtype(np.uint8))
    means = [values[nearest == j].astype(np.float64).mean() for j in range(8)]
    np.testing.assert_allclose(centroids, means, rtol=1e-9, atol=1e-12)


def test_kmeans_returns_the_distinct_values_when_there_are_few():
    values = np.sort(np.array([3.0, -1.0, 3.0, 0.5, -1.0], dtype=np.float32))
    np.testing.assert_array_equal(kmeans_codebook(values, 3), [-1.0, 0.5, 3.0])
    np.testing.assert_array_equal(kmeans_codebook(values, 16), [-1.0, 0.5, 3.0])


@given(st.integers(0, 2**32 - 1))
@settings(deadline=None, max_examples=30)
def test_assignment_is_the_exact_nearest_level(seed):
    rng = np.random.default_rng(seed)
    codebook = np.unique(rng.standard_normal(rng.integers(2, 10)).astype(np.float16)).astype(float)
    values = rng.standard_normal(500).astype(np.float32)
    midpoints = ((codebook[:-1] + codebook[1:]) / 2).astype(np.float32)
    values[: len(midpoints)] = midpoints  # exact ties
    got = assign(values, thresholds(codebook, values.dtype), np.dtype(np.uint8))
    distance = np.abs(values.astype(np.float64)[:, None] - codebook[None, :])
    best = distance.min(axis=1)
    assert np.array_equal(distance[np.arange(len(values)), got], best)
    lowest = np.argmax(distance == best[:, None], axis=1)  # ties go to the lower level
    assert np.array_equal(got, lowest)


# --- round trips ---------------------------------------------------------------------------------

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
INT_DTYPES = [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool]


@st.composite
def state_dicts(draw):
    count = draw(st.integers(0, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    state = {}
    for index in range(count):
        shape = draw(
            st.one_of(
                st.lists(st.integers(0, 6), max_size=3).map(tuple),
                st.tuples(st.integers(0, 3000)),
            )
        )
        dtype = draw(st.sampled_from(FLOAT_DTYPES + INT_DTYPES))
        kind = draw(st.sampled_from(["normal", "few", "constant"]))
        size = int(np.prod(shape))
        if dtype.is_floating_point:
            if kind == "normal":
                data = rng.standard_normal(size) * rng.uniform(0.01, 10)
            elif kind == "few":
                data = rng.choice(rng.standard_normal(3), size)
            else:
                data = np.full(size, rng.standard_normal())
            tensor = torch.from_numpy(data).to(dtype)
        elif dtype == torch.bool:
            tensor = torch.from_numpy(rng.integers(0, 2, size).astype(bool))
        else:
            info = torch.iinfo(dtype)
            low = info.min if kind == "normal" else max(info.min, -5)
            tensor = torch.from_numpy(rng.integers(low, info.max, size, endpoint=True)).to(dtype)
        state[f"layer{index}.{kind}"] = tensor.reshape(shape)
    return state


CONFIGS = st.fixed_dictionaries(
    {
        "levels": st.sampled_from([1, 2, 3, 16, 300]),
        "scheme": st.sampled_from(["kmeans", "uniform"]),
        "coder": st.sampled_from(["auto", "range", "zstd"]),
        "groups": st.sampled_from(["global", "tensor"]),
        "precision": st.sampled_from(["float16", "bfloat16", "float32"]),
    }
)


def _cast_levels(codebook: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    work = torch.float64 if dtype == torch.float64 else torch.float32
    return torch.from_numpy(codebook).to(work).to(dtype)


@given(state_dicts(), CONFIGS, st.binary(max_size=8))
@SETTINGS
def test_round_trip_is_exact_and_self_delimiting(state, config, garbage):
    code = compress(state, **config)
    word = code.to_bytes()
    assert sum(code.breakdown.values()) == code.bits
    assert set(code.breakdown) == set(PARTS)
    assert len(word) == math.ceil(code.bits / 8)
    assert code.num_params == sum(t.numel() for t in state.values())
    decoded = code.decode()
    again = Code.from_bytes(word + garbage)
    assert again.bits == code.bits and again.breakdown == code.breakdown
    assert again.to_bytes() == word
    assert _equal(decoded, again.decode())
    assert list(decoded) == list(state)
    for name, tensor in state.items():
        out = decoded[name]
        assert out.dtype == tensor.dtype and out.shape == tensor.shape
        if not tensor.dtype.is_floating_point:
            assert torch.equal(out, tensor)
    for group in code.groups:
        assert 1 <= len(group.codebook) <= config["levels"]
        for index in group.members:
            spec = code.layout[index]
            allowed = _cast_levels(group.codebook, spec.dtype).double()
            assert torch.isin(decoded[spec.name].double(), allowed).all()


@given(state_dicts())
@SETTINGS
def test_few_distinct_values_decode_exactly(state):
    """With levels ≥ distinct values and float32 codebooks, quantization loses nothing."""
    state = {k: v for k, v in state.items() if v.dtype != torch.float64}
    distinct = sum(len(torch.unique(v.float())) for v in state.values() if v.is_floating_point())
    code = compress(state, levels=max(distinct, 1), precision="float32", groups="global")
    assert _equal(code.decode(), state)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scheme", ["kmeans", "uniform"])
def test_every_value_goes_to_its_nearest_stored_level(dtype, scheme):
    weights = torch.randn(2000, dtype=dtype) * 3
    code = compress({"w": weights}, levels=7, scheme=scheme, precision="float32")
    levels = torch.from_numpy(code.groups[0].codebook).to(dtype)
    got = code.decode()["w"]
    best = (weights[:, None] - levels[None, :]).abs().min(dim=1).values
    assert torch.equal((weights - got).abs(), best)


def test_uniform_levels_are_evenly_spaced_from_min_to_max():
    weights = torch.tensor([-2.0, -1.2, 0.1, 1.0, 2.0, 2.0])
    code = compress({"w": weights}, levels=5, scheme="uniform", precision="float32")
    np.testing.assert_array_equal(code.groups[0].codebook, [-2.0, -1.0, 0.0, 1.0, 2.0])


def test_single_element_empty_and_scalar_tensors():
    state = {
        "empty": torch.empty(0, 3),
        "one": torch.tensor([0.25]),
        "scalar": torch.tensor(-1.5, dtype=torch.float64),
        "int_scalar": torch.tensor(7, dtype=torch.int64),
        "int_empty": torch.empty(0, dtype=torch.int32),
    }
    for groups in ("global", "tensor"):
        code = compress(state, groups=groups, precision="float32")
        assert _equal(code.decode(), state)
        assert _equal(Code.from_bytes(code.to_bytes()).decode(), state)
    code = compress({})
    assert code.decode() == {} and code.num_params == 0 and code.bits_per_param == math.inf


def test_module_input_codes_parameters_and_buffers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4))
    model(torch.randn(16, 5))  # running statistics and the step counter become data-dependent
    code = compress(model, levels=4)
    decoded = code.decode()
    assert list(decoded) == list(model.state_dict())
    assert decoded["1.num_batches_tracked"].item() == 1
    assert decoded["1.running_mean"].abs().sum() > 0
    model.load_state_dict(decoded)


def test_nan_and_unsupported_dtypes_are_rejected_with_the_tensor_name():
    with pytest.raises(ValueError, match="'bad.weight' has NaN or infinite"):
        compress({"ok": torch.ones(3), "bad.weight": torch.tensor([1.0, float("nan")])})
    with pytest.raises(ValueError, match="'c' has dtype torch.complex64"):
        compress({"c": torch.ones(2, dtype=torch.complex64)})
    with pytest.raises(ValueError, match="levels"):
        compress({"w": torch.ones(2)}, levels=0)
    with pytest.raises(ValueError, match="precision='float32'"):
        compress({"w": torch.tensor([1e6, -1e6, 0.0])}, precision="float16")
    with pytest.raises(ValueError, match="nn.Module or a state dict"):
        compress([torch.ones(2)])


# --- what the word pays for ----------------------------------------------------------------------


@pytest.mark.parametrize(("grid_size", "bits"), [(1, 0), (2, 1), (5, 3), (8, 3), (9, 4)])
def test_grid_index_costs_ceil_log2_of_the_grid(grid_size, bits):
    code = compress(_small_model(), grid_index=grid_size - 1, grid_size=grid_size)
    assert code.breakdown["config_choice"] == bits
    again = Code.from_bytes(code.to_bytes())
    assert (again.grid_index, again.grid_size) == (grid_size - 1, grid_size)
    with pytest.raises(ValueError, match="grid_index"):
        compress(_small_model(), grid_index=grid_size, grid_size=grid_size)


def test_payload_is_within_a_thousandth_of_the_empirical_entropy():
    """10⁷ symbols of a skewed 16-letter law: payload ≤ (1 + 10⁻³)·n·H."""
    rng = np.random.default_rng(7)
    probabilities = rng.dirichlet(np.full(16, 0.7))
    levels = np.linspace(-1, 1, 16, dtype=np.float32)
    symbols = rng.choice(16, size=10**7, p=probabilities)
    code = compress({"w": torch.from_numpy(levels[symbols])}, levels=16, coder="range")
    counts = np.bincount(symbols, minlength=16).astype(np.float64)
    counts = counts[counts > 0]
    n_h = float(-(counts * np.log2(counts / counts.sum())).sum())
    group = code.groups[0]
    assert group.model.kind == "counts"
    np.testing.assert_array_equal(np.sort(group.model.counts), np.sort(counts))
    assert n_h - 64 <= code.breakdown["payload"] <= 1.001 * n_h
    table = sum(delta_bits(int(c)) for c in group.model.counts[:-1]) + 1
    assert code.breakdown["symbol_model"] == table


def test_auto_keeps_the_shorter_coder_and_each_wins_somewhere():
    torch.manual_seed(1)
    periodic = {
        "w": torch.arange(4.0).repeat(5000)
    }  # zstd finds the period, the range coder cannot
    gaussian = {"w": torch.randn(100000)}  # evenly spaced levels: symbol counts are Gaussian
    for state, kw, winner in (
        (periodic, {"levels": 4}, "zstd"),
        (gaussian, {"levels": 256, "scheme": "uniform"}, "range"),
    ):
        bits = {coder: compress(state, coder=coder, **kw).bits for coder in ("range", "zstd")}
        auto = compress(state, coder="auto", **kw)
        assert auto.bits == min(bits.values())
        assert auto.groups[0].coder == winner
    assert compress(gaussian, levels=256, scheme="uniform").groups[0].model.kind == "gaussian"
    assert compress({"w": torch.randn(5000)}, levels=8).groups[0].model.kind == "counts"


def test_prior_supplies_layout_and_reference():
    state = _small_model()
    base = {k: (v + 0.5 if v.is_floating_point() else v) for k, v in state.items()}
    prior = ReferencePrior(base, name="base")
    with_prior = compress(state, prior, levels=4)
    without = compress(state, levels=4)
    assert with_prior.breakdown["layout"] == 1 < without.breakdown["layout"]
    assert with_prior.prior_fingerprint == prior.fingerprint()
    decoded = with_prior.decode()
    levels = torch.from_numpy(with_prior.groups[0].codebook).float()
    for name in ("fc1.weight", "fc1.bias"):
        nearest = torch.argmin(((state[name] - base[name])[..., None] - levels).abs(), dim=-1)
        assert torch.equal(decoded[name], base[name] + levels[nearest])
    word = with_prior.to_bytes()
    with pytest.raises(CodeError, match="pass the same prior"):
        Code.from_bytes(word)
    other = ReferencePrior({k: v + 1 if v.is_floating_point() else v for k, v in base.items()})
    with pytest.raises(CodeError, match="not the one it was made with"):
        Code.from_bytes(word, other)
    parsed = Code.from_bytes(word, prior)
    assert _equal(parsed.decode(), decoded)
    assert _equal(parsed.decode(prior), decoded)
    with pytest.raises(CodeError, match="not the one"):
        parsed.decode(other)


def test_reference_values_are_theta0_plus_a_level():
    weights = torch.randn(300, dtype=torch.float64)
    base = torch.randn(300, dtype=torch.float64)
    prior = ReferencePrior({"w": base})
    code = compress({"w": weights}, prior, levels=5, precision="float32")
    levels = torch.from_numpy(code.groups[0].codebook)
    decoded = code.decode()["w"]
    expected = base + levels[torch.argmin(((weights - base)[:, None] - levels).abs(), dim=1)]
    assert torch.equal(decoded, expected)


def test_subspace_module_is_coded_through_its_coded_state_and_prior():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    subspace = Subspace(net, dim=16, seed=5)
    with torch.no_grad():
        subspace.w.normal_()
    subspace(torch.randn(10, 4))  # BatchNorm statistics of the wrapped model
    code = compress(subspace, levels=8)
    assert code.breakdown["layout"] == 1
    assert code.prior_fingerprint == subspace.prior().fingerprint()
    decoded = code.decode()
    assert list(decoded) == list(subspace.coded_state())
    subspace.load_coded_state(decoded)
    again = Code.from_bytes(code.to_bytes(), subspace.prior())
    assert _equal(again.decode(), decoded)


def test_save_and_load(tmp_path):
    code = compress(_small_model())
    code.save(tmp_path / "model.code")
    assert Code.load(tmp_path / "model.code").to_bytes() == code.to_bytes()
    assert code.describe()["bits"] == code.bits


# --- corruption ----------------------------------------------------------------------------------


def test_every_truncation_is_reported():
    word = compress(_small_model(), levels=4).to_bytes()
    for length in range(len(word)):
        with pytest.raises(CodeError, match="code word truncated"):
            Code.from_bytes(word[:length])


def test_every_bit_flip_is_detected_and_padding_is_ignored():
    code = compress(_small_model(), levels=4)
    word = bytearray(code.to_bytes())
    reference = code.decode()
    for position in range(8 * len(word)):
        flipped = bytearray(word)
        flipped[position // 8] ^= 0x80 >> (position % 8)
        if position < code.bits:
            with pytest.raises(CodeError):
                Code.from_bytes(bytes(flipped)).decode()
        else:
            assert _equal(Code.from_bytes(bytes(flipped)).decode(), reference)


@given(
    state_dicts(),
    CONFIGS,
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1),
)
@SETTINGS
def test_corrupted_words_raise_code_error(state, config, edits):
    code = compress(state, **config)
    word = bytearray(code.to_bytes())
    for where, mask in edits:
        word[int(where * len(word))] ^= mask
    changed = [i for i, (a, b) in enumerate(zip(word, code.to_bytes(), strict=True)) if a != b]
    if not changed:
        return
    first_bit = 8 * changed[0] + (8 - (word[changed[0]] ^ code.to_bytes()[changed[0]]).bit_length())
    if first_bit < code.bits:
        with pytest.raises(CodeError):
            Code.from_bytes(bytes(word)).decode()
    else:
        assert _equal(Code.from_bytes(bytes(word)).decode(), code.decode())


@given(st.binary(max_size=200))
@settings(deadline=None, max_examples=1000)
def test_random_bytes_only_ever_raise_code_error(data):
    try:
        Code.from_bytes(data).decode()
    except CodeError:
        pass


def _seal(writer: BitWriter) -> bytes:
    """Append the checksum the parser expects (for hand-made hostile words)."""
    writer.write(zlib.crc32(writer.getvalue()), 32)
    return writer.getvalue()


def _header(writer: BitWriter) -> None:
    writer.write_gamma(1)  # version
    writer.write_gamma(1)  # grid size
    writer.write(0, 4)  # global, float16, no reference
    writer.write(0, 1)  # layout in the word


def _one_tensor_layout(writer: BitWriter, shape: tuple[int, ...]) -> None:
    writer.write_delta(2)  # one tensor
    writer.write_delta(1)  # shares nothing with the previous name
    writer.write_delta(2)
    writer.write_bits(b"w", 8)
    writer.write(0, 4)  # float32
    writer.write_delta(len(shape) + 1)
    for size in shape:
        writer.write_delta(size + 1)


def test_hostile_sizes_are_refused_before_allocation():
    huge = BitWriter()
    _header(huge)
    _one_tensor_layout(huge, (2**40,))
    huge.write_delta(1)  # a single level: the word would be tiny
    huge.write(0, 16)
    start = time.perf_counter()
    with pytest.raises(CodeError, match="declares 1099511627776 elements"):
        Code.from_bytes(_seal(huge))
    assert time.perf_counter() - start < 1.0

    long_payload = BitWriter()
    _header(long_payload)
    _one_tensor_layout(long_payload, (100,))
    long_payload.write_delta(2)
    long_payload.write(0, 16)
    long_payload.write(0x3C00, 16)
    long_payload.write(1, 1)  # zstd
    long_payload.write_delta(2**60)
    with pytest.raises(CodeError, match="truncated: needed .* reading the payload of group"):
        Code.from_bytes(_seal(long_payload))

    many_levels = BitWriter()
    _header(many_levels)
    _one_tensor_layout(many_levels, (3,))
    many_levels.write_delta(5000)
    with pytest.raises(CodeError, match="declares 5000 levels"):
        Code.from_bytes(_seal(many_levels))


def test_forged_payload_with_valid_checksum_is_caught_by_the_count_table():
    code = compress({"w": torch.randn(4000)}, levels=8, coder="range")
    group = code.groups[0]
    writer = BitWriter()
    _header(writer)
    _one_tensor_layout(writer, (4000,))
    writer.write_delta(len(group.codebook))
    for value in group.codebook:
        writer.write(int(np.float16(value).view(np.uint16)), 16)
    writer.write(0, 1)  # range coder
    writer.write(0, 1)  # count table
    for count in group.model.counts[:-1]:
        writer.write_delta(int(count))
    forged = np.random.default_rng(0).integers(0, 256, len(group.payload), dtype=np.uint8)
    writer.write_delta(len(group.payload) // 4 + 1)
    writer.write_bits(forged.tobytes(), 8 * len(group.payload))
    parsed = Code.from_bytes(_seal(writer))
    with pytest.raises(CodeError, match="count table|range decod"):
        parsed.decode()
