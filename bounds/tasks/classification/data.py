"""The built-in MNIST-1D data, drawn i.i.d. so that the bounds' assumption holds.

`mnist1d.data.make_dataset` balances the classes exactly and normalises by the statistics
of the whole sample, which makes the examples (slightly) dependent. The bounds assume
i.i.d. examples, so here every example draws its label uniformly from the ten digits and
its signal from mnist1d's own template transform, and the normalisation uses constants
computed from a separate reference sample with a fixed seed (part of the generator, not
of the data). Everything is generated offline; the arrays are cached on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

#: Seed of the reference sample whose mean and standard deviation normalise every split.
_REFERENCE_SEED = 2**31 - 1
_REFERENCE_SIZE = 4000
#: Version of this generator; bump it when the arrays it produces change.
_GENERATOR_VERSION = 1


@dataclass(frozen=True)
class MNIST1DSpec:
    """Which MNIST-1D arrays to generate: n training and m test examples from `seed`."""

    n: int = 60000
    m: int = 10000
    seed: int = 0

    def fingerprint(self) -> str:
        """sha256 of the generator version and these settings."""
        text = json.dumps({"version": _GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


@contextlib.contextmanager
def _global_numpy_seed(seed: int):
    """mnist1d draws from numpy's global generator; seed it and restore the caller's state."""
    state = np.random.get_state()  # noqa: NPY002 - mnist1d uses the global generator
    np.random.seed(seed)  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


def _draw(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` i.i.d. raw (unnormalised) MNIST-1D signals and their labels."""
    from mnist1d.data import get_dataset_args, get_templates
    from mnist1d.transform import transform

    templates = get_templates()
    args = get_dataset_args()
    with _global_numpy_seed(seed):
        labels = np.random.randint(0, len(templates["y"]), size=count)  # noqa: NPY002
        signals = [transform(templates["x"][y], templates["t"], args)[0] for y in labels]
    x = np.stack(signals).astype(np.float64) if count else np.zeros((0, args.final_seq_length))
    return x, np.asarray(templates["y"])[labels].astype(np.int64)


def _cache_dir() -> Path:
    base = os.environ.get("BOUNDS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "bounds"
    )
    return Path(base)


def mnist1d_arrays(spec: MNIST1DSpec = MNIST1DSpec()) -> dict[str, np.ndarray]:
    """Arrays x (n×40 float32), y (n int64), x_test, y_test for `spec`, cached on disk.

    Train and test come from one stream of i.i.d. draws with `spec.seed` (the first n are
    the training set), so they are independent samples of the same distribution.
    """
    if spec.n < 0 or spec.m < 0:
        raise ValueError(f"mnist1d sizes must be non-negative, got n={spec.n}, m={spec.m}")
    path = _cache_dir() / f"mnist1d-{spec.fingerprint()[:16]}.npz"
    if path.exists():
        with np.load(path) as cached:
            return {key: cached[key] for key in cached.files}
    reference, _ = _draw(_REFERENCE_SIZE, _REFERENCE_SEED)
    mean, std = reference.mean(), reference.std()
    x, y = _draw(spec.n + spec.m, spec.seed)
    x = ((x - mean) / std).astype(np.float32)
    arrays = {"x": x[: spec.n], "y": y[: spec.n], "x_test": x[spec.n :], "y_test": y[spec.n :]}
    with contextlib.suppress(OSError):  # a read-only home only loses the cache
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(temporary, **arrays)
        temporary.replace(path)
    return arrays


def mnist1d(spec: MNIST1DSpec = MNIST1DSpec(), split: str = "train"):
    """A torch TensorDataset of MNIST-1D: inputs [N, 1, 40] float32, labels int64."""
    import torch
    from torch.utils.data import TensorDataset

    if split not in ("train", "test"):
        raise ValueError(f"mnist1d split must be 'train' or 'test', got {split!r}")
    arrays = mnist1d_arrays(spec)
    suffix = "" if split == "train" else "_test"
    x = torch.from_numpy(arrays["x" + suffix]).unsqueeze(1)
    return TensorDataset(x, torch.from_numpy(arrays["y" + suffix]))
