"""Reading safetensors checkpoints tensor by tensor, in chunks, without loading the model.

The safetensors format (https://github.com/huggingface/safetensors, "Format"): an 8-byte
little-endian unsigned header length N, N bytes of a UTF-8 JSON object mapping each tensor name
to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (plus an optional ``"__metadata__"``),
then the data; offsets count from the first byte after the header, values are little-endian and
row-major. A sharded checkpoint has an index file ``*.safetensors.index.json`` whose
``"weight_map"`` maps every tensor name to the shard file (next to the index) that holds it.

Values are read with positioned reads into one reused buffer. Memory-mapping the file instead
(as ``safetensors.safe_open`` does) keeps every page read resident in the process for as long as
the mapping lives, so streaming a checkpoint that way costs as much resident memory as the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .layout import TensorSpec

# safetensors dtype name → (little-endian storage dtype, tensor dtype); the code word's dtypes only
SAFETENSORS_DTYPES: dict[str, tuple[np.dtype, torch.dtype]] = {
    "F64": (np.dtype("<f8"), torch.float64),
    "F32": (np.dtype("<f4"), torch.float32),
    "F16": (np.dtype("<f2"), torch.float16),
    "BF16": (np.dtype("<u2"), torch.bfloat16),  # the high half of a float32, read as bits
    "I64": (np.dtype("<i8"), torch.int64),
    "I32": (np.dtype("<i4"), torch.int32),
    "I16": (np.dtype("<i2"), torch.int16),
    "I8": (np.dtype("i1"), torch.int8),
    "U8": (np.dtype("u1"), torch.uint8),
    "BOOL": (np.dtype("u1"), torch.bool),
}
MAX_HEADER_BYTES = 100_000_000  # the reference implementation's limit
INDEX_SUFFIX = ".safetensors.index.json"


@dataclass(frozen=True)
class StoredTensor:
    """One tensor of a checkpoint: its spec and where its bytes lie."""

    spec: TensorSpec
    path: Path
    offset: int  # of the first byte, from the start of the file
    storage: np.dtype  # little-endian dtype of the stored elements

    @property
    def nbytes(self) -> int:
        return self.spec.numel * self.storage.itemsize


def checkpoint_tensors(path: str | Path) -> list[StoredTensor]:
    """The tensors of a checkpoint, sorted by name (Unicode code points).

    ``path`` is a ``.safetensors`` file, a sharded checkpoint's index ``*.safetensors.index.json``,
    or a directory holding one index (used) or else one or more ``.safetensors`` files (all read).
    Raises ValueError for a missing or malformed file, an index that does not match its shards,
    a name held twice, an unsupported dtype, or a checkpoint without tensors.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        indexes = sorted(path.glob("*" + INDEX_SUFFIX))
        if len(indexes) > 1:
            names = ", ".join(index.name for index in indexes)
            raise ValueError(f"directory {str(path)!r} holds several index files ({names})")
        if indexes:
            tensors = _indexed_tensors(indexes[0])
        else:
            files = sorted(path.glob("*.safetensors"))
            if not files:
                raise ValueError(f"directory {str(path)!r} holds no .safetensors file")
            tensors = [tensor for file in files for tensor in read_header(file)]
    elif path.name.endswith(".json"):
        tensors = _indexed_tensors(path)
    else:
        tensors = read_header(path)
    if not tensors:
        raise ValueError(f"checkpoint {str(path)!r} holds no tensors")
    tensors.sort(key=lambda tensor: tensor.spec.name)
    for first, second in zip(tensors, tensors[1:], strict=False):
        if first.spec.name == second.spec.name:
            raise ValueError(
                f"tensor {first.spec.name!r} is in both {str(first.path)!r} "
                f"and {str(second.path)!r}"
            )
    return tensors


def read_header(path: Path) -> list[StoredTensor]:
    """The tensors of one safetensors file, in header order, with their offsets checked."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as file:
            length = int.from_bytes(file.read(8), "little") if size >= 8 else -1
            if not 0 < length <= min(size - 8, MAX_HEADER_BYTES):
                raise ValueError(f"{str(path)!r} is not a safetensors file (bad header length)")
            raw = file.read(length)
    except OSError as error:
        raise ValueError(f"cannot read {str(path)!r}: {error.strerror}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(
            f"{str(path)!r} is not a safetensors file (its header is not JSON)"
        ) from None
    if not isinstance(header, dict):
        raise ValueError(f"{str(path)!r} is not a safetensors file (its header is not an object)")
    data_start = 8 + length
    tensors = [
        _stored_tensor(path, name, entry, data_start, size)
        for name, entry in header.items()
        if name != "__metadata__"
    ]
    spans = sorted((tensor.offset, tensor.offset + tensor.nbytes) for tensor in tensors)
    for (_, end), (begin, _) in zip(spans, spans[1:], strict=False):
        if begin < end:
            raise ValueError(f"{str(path)!r} is corrupted: two tensors share bytes")
    return tensors


def _stored_tensor(
    path: Path, name: str, entry: object, data_start: int, size: int
) -> StoredTensor:
    where = f"tensor {name!r} in {str(path)!r}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise ValueError(f"{where} lacks its dtype, shape or data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in SAFETENSORS_DTYPES:
        raise ValueError(f"{where} has dtype {dtype!r}; supported: {', '.join(SAFETENSORS_DTYPES)}")
    if not (isinstance(shape, list) and all(_is_count(size) for size in shape)):
        raise ValueError(f"{where} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise ValueError(f"{where} has invalid data_offsets {offsets!r}")
    storage, torch_dtype = SAFETENSORS_DTYPES[dtype]
    spec = TensorSpec(name, tuple(shape), torch_dtype)
    begin, end = offsets
    if end - begin != spec.numel * storage.itemsize or data_start + end > size:
        raise ValueError(
            f"{where} has data_offsets {offsets} that do not fit its shape or the file"
        )
    return StoredTensor(spec, path, data_start + begin, storage)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _indexed_tensors(index: Path) -> list[StoredTensor]:
    """The tensors a sharded checkpoint's index lists, each from its shard (exactly those)."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        weight_map = None
    if not (
        isinstance(weight_map, dict)
        and weight_map
        and all(isinstance(shard, str) for shard in weight_map.values())
    ):
        raise ValueError(f"{str(index)!r} is not an index with a weight_map of tensors to shards")
    tensors = []
    for shard in sorted(set(weight_map.values())):
        shard_path = index.parent / shard
        if not shard_path.is_file():
            raise ValueError(f"index {str(index)!r} names shard {shard!r}, which does not exist")
        held = {tensor.spec.name: tensor for tensor in read_header(shard_path)}
        listed = {name for name, owner in weight_map.items() if owner == shard}
        missing, unlisted = sorted(listed - held.keys()), sorted(held.keys() - listed)
        if missing:
            raise ValueError(
                f"index {str(index)!r} puts tensor {missing[0]!r} in shard {shard!r}, "
                "which does not hold it"
            )
        if unlisted:
            raise ValueError(
                f"shard {shard!r} holds tensor {unlisted[0]!r}, which index {str(index)!r} "
                "does not list"
            )
        tensors.extend(held.values())
    return tensors


# --- reading values ------------------------------------------------------------------------------


def work_dtype_of(dtype: torch.dtype) -> np.dtype:
    """The arithmetic dtype of quantization (as :func:`quantize.code.work_dtype`), in numpy."""
    return np.dtype(np.float64) if dtype == torch.float64 else np.dtype(np.float32)


def value_chunks(tensor: StoredTensor, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start, values) for runs of ``chunk`` elements of a floating tensor, row-major, converted
    exactly to the work dtype. Each array is valid only until the next one is requested (one read
    buffer is reused)."""
    numel, itemsize = tensor.spec.numel, tensor.storage.itemsize
    buffer = bytearray(min(chunk, numel) * itemsize)
    with open(tensor.path, "rb", buffering=0) as file:
        for start in range(0, numel, chunk):
            view = memoryview(buffer)[: min(chunk, numel - start) * itemsize]
            _read_exactly(file, tensor, tensor.offset + start * itemsize, view)
            yield start, _to_work(np.frombuffer(view, dtype=tensor.storage), tensor.spec.dtype)


def _to_work(stored: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    if dtype == torch.bfloat16:
        return (stored.astype(np.uint32) << 16).view(np.float32)
    return stored.astype(work_dtype_of(dtype), copy=False)  # a view for float32 and float64


def read_tensor(tensor: StoredTensor) -> torch.Tensor:
    """A whole non-floating tensor (integer and bool buffers are small)."""
    buffer = bytearray(tensor.nbytes)
    if buffer:
        with open(tensor.path, "rb", buffering=0) as file:
            _read_exactly(file, tensor, tensor.offset, memoryview(buffer))
    values = np.frombuffer(buffer, dtype=tensor.storage).astype(tensor.storage.newbyteorder("="))
    if tensor.spec.dtype == torch.bool and values.size and int(values.max()) > 1:
        raise ValueError(f"bool tensor {tensor.spec.name!r} holds bytes other than 0 and 1")
    return torch.from_numpy(values).to(tensor.spec.dtype).reshape(tensor.spec.shape)


def _read_exactly(file, tensor: StoredTensor, offset: int, view: memoryview) -> None:
    file.seek(offset)
    done = 0
    while done < len(view):
        count = file.readinto(view[done:])
        if not count:
            raise ValueError(
                f"{str(tensor.path)!r} ended while reading tensor {tensor.spec.name!r}"
            )
        done += count
