"""Random-subspace training: θ = θ0 + P·w with only the d coordinates w trained.

Li et al. 2018, "Measuring the intrinsic dimension of objective landscapes", train in a random
d-dimensional subspace of the D-dimensional parameter space; Lotfi et al. 2022, "PAC-Bayes
compression bounds so tight that they can explain generalization", use such subspaces (with
structured projections) to get short codes. Here θ0 (the wrapped model's floating parameters at
construction) and P (regenerated from `seed`) form the prior; the code word carries only w and
the wrapped model's buffers (`Subspace.coded_state`). θ0 is a prior only if it can be
re-derived: `init_seed` declares the seed under which the architecture produced it, and the
decoder's skeleton (`Subspace.fresh`) regenerates it and refuses a θ0 that differs.

Projections (all with entries of variance 1/D, so every column has expected squared norm 1 —
the expected-norm form of Li et al.'s unit-norm columns; w is float32, P is float32):

- ``"dense"``: P = G/√D, G with i.i.d. N(0, 1) entries drawn chunk by chunk of rows exactly as
  ``"chunked"`` does (so both give the same P for the same seed), cached once as a
  non-persistent buffer; P·w is one matrix-vector product. Allowed only when D·d ≤ 1e8.
- ``"chunked"``: the same P, never stored: rows come in chunks of ⌊2²⁰/d⌋ rows, chunk c drawn
  from a ``torch.Generator`` seeded with a sha256 hash of (seed, c), regenerated in the forward
  and again in the backward (Pᵀ·g) pass. Extra memory O(2²⁰ + D); time O(D·d) per pass.
- ``"kronecker"``: P = (A ⊗ B)/√D restricted to its first D rows and d columns, with A of
  shape ⌈√D⌉×⌈√d⌉ and B of shape ⌈D/⌈√D⌉⌉×⌈d/⌈√d⌉⌉, i.i.d. N(0, 1). With W the zero-padded
  w reshaped row-major to A's column count × B's column count, (A ⊗ B)·vec(W) = vec(A W Bᵀ),
  so P·w costs two small matrix products and memory O(√D·√d + D).
- ``"auto"``: ``"dense"`` (unstructured, i.i.d. entries) when D·d ≤ 1e8, i.e. when P takes at
  most 400 MB; else ``"kronecker"``, which is cheap at any size (O(√D·d + D·√d) per pass versus
  O(D·d)) but structured. ``"chunked"`` keeps the unstructured P at any size at the price of
  regenerating D·d Gaussian numbers in every forward and backward pass.

P depends on torch's CPU random generator; its `projection_digest` (sha256 of the generated
numbers that define P) is part of the prior's fingerprint and of the checkpoint, and loading
checks it, so a different generator can never silently give a different P.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from quantize.priors import Fingerprinter, FixedPrior, Layout, state_layout

CHECKPOINT_FORMAT = "bounds.subspace/1"
DENSE_MAX_ENTRIES = 10**8
CHUNK_ELEMENTS = 2**20
PROJECTIONS = ("dense", "chunked", "kronecker")


def _derived_seed(seed: int, *labels: object) -> int:
    """A 63-bit generator seed from sha256 of (seed, labels): independent streams per label."""
    text = json.dumps([CHECKPOINT_FORMAT, seed, *labels], separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") >> 1


def _gaussian(shape: tuple[int, ...], seed: int, *labels: object) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(_derived_seed(seed, *labels))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def _chunk_bounds(num_rows: int, dim: int) -> list[tuple[int, int]]:
    rows = max(1, CHUNK_ELEMENTS // dim)
    return [(start, min(start + rows, num_rows)) for start in range(0, num_rows, rows)]


def _row_chunk(seed: int, index: int, start: int, stop: int, dim: int) -> torch.Tensor:
    """Rows start:stop of G (chunk `index`), the unscaled N(0, 1) matrix with P = G/√D."""
    return _gaussian((stop - start, dim), seed, "chunk", index)


def _digest(tensors: list[torch.Tensor]) -> str:
    fingerprinter = Fingerprinter("bounds.subspace.projection/1")
    for index, tensor in enumerate(tensors):
        fingerprinter.add_tensor(str(index), tensor)
    return fingerprinter.hexdigest()


class _ChunkedMatVec(torch.autograd.Function):
    """y = P·w and grad_w = Pᵀ·g with P's row chunks regenerated, never stored whole."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, seed: int, num_rows: int) -> torch.Tensor:
        ctx.seed, ctx.num_rows, ctx.dim = seed, num_rows, w.numel()
        out = torch.empty(num_rows, dtype=w.dtype, device=w.device)
        for index, (start, stop) in enumerate(_chunk_bounds(num_rows, w.numel())):
            chunk = _row_chunk(seed, index, start, stop, w.numel()).to(w.device)
            torch.mv(chunk, w, out=out[start:stop])
        # Scaling once here, not per chunk: P·w = (G·w)/√D.
        return out.mul_(1.0 / math.sqrt(num_rows))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad_w = torch.zeros(ctx.dim, dtype=grad_out.dtype, device=grad_out.device)
        for index, (start, stop) in enumerate(_chunk_bounds(ctx.num_rows, ctx.dim)):
            chunk = _row_chunk(ctx.seed, index, start, stop, ctx.dim).to(grad_out.device)
            grad_w.addmv_(chunk.T, grad_out[start:stop])
        return grad_w.mul_(1.0 / math.sqrt(ctx.num_rows)), None, None


class _Projection(nn.Module):
    """w (d,) ↦ P·w (D,), with P defined by (kind, D, d, seed)."""

    kind = ""

    def __init__(self, num_rows: int, dim: int, seed: int) -> None:
        super().__init__()
        self.num_rows, self.dim, self.seed = num_rows, dim, seed

    def digest(self) -> str:
        """sha256 of (some of) the generated N(0, 1) numbers that define P, regenerated from the
        seed: a different random generator changes it, so a reload can detect that."""
        raise NotImplementedError

    def _edge_chunks(self) -> list[torch.Tensor]:
        """First and last row chunks of G (P = G/√D): enough to detect another generator."""
        bounds = _chunk_bounds(self.num_rows, self.dim)
        last = len(bounds) - 1
        return [
            _row_chunk(self.seed, index, *bounds[index], self.dim) for index in sorted({0, last})
        ]


class _ChunkedProjection(_Projection):
    kind = "chunked"

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _ChunkedMatVec.apply(w, self.seed, self.num_rows)

    def digest(self) -> str:
        return _digest(self._edge_chunks())


class _DenseProjection(_Projection):
    kind = "dense"

    def __init__(self, num_rows: int, dim: int, seed: int) -> None:
        super().__init__(num_rows, dim, seed)
        matrix = torch.empty(num_rows, dim, dtype=torch.float32)
        for index, (start, stop) in enumerate(_chunk_bounds(num_rows, dim)):
            matrix[start:stop] = _row_chunk(seed, index, start, stop, dim)
        self.register_buffer("matrix", matrix.mul_(1.0 / math.sqrt(num_rows)), persistent=False)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.mv(self.matrix, w)

    def digest(self) -> str:
        return _digest(self._edge_chunks())


def kronecker_shapes(num_rows: int, dim: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Shapes of the factors A, B with (A ⊗ B) covering a num_rows × dim matrix."""
    rows_a, cols_a = math.isqrt(num_rows - 1) + 1, math.isqrt(dim - 1) + 1
    return (rows_a, cols_a), (-(-num_rows // rows_a), -(-dim // cols_a))


def _kronecker_factors(num_rows: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The unscaled N(0, 1) factors A, B; P = (A ⊗ B)/√D restricted to num_rows × dim."""
    shape_a, shape_b = kronecker_shapes(num_rows, dim)
    return _gaussian(shape_a, seed, "kronecker", "A"), _gaussian(shape_b, seed, "kronecker", "B")


class _KroneckerProjection(_Projection):
    kind = "kronecker"

    def __init__(self, num_rows: int, dim: int, seed: int) -> None:
        super().__init__(num_rows, dim, seed)
        factor_a, factor_b = _kronecker_factors(num_rows, dim, seed)
        # The 1/√D scale lives in A so that the forward is two plain products.
        self.register_buffer("factor_a", factor_a.mul_(1.0 / math.sqrt(num_rows)), False)
        self.register_buffer("factor_b", factor_b, persistent=False)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        cols_a, cols_b = self.factor_a.shape[1], self.factor_b.shape[1]
        padded = nn.functional.pad(w, (0, cols_a * cols_b - self.dim)).reshape(cols_a, cols_b)
        product = self.factor_a @ padded @ self.factor_b.T
        return product.reshape(-1)[: self.num_rows]

    def digest(self) -> str:
        return _digest(list(_kronecker_factors(self.num_rows, self.dim, self.seed)))


_PROJECTION_TYPES: dict[str, type[_Projection]] = {
    cls.kind: cls for cls in (_DenseProjection, _ChunkedProjection, _KroneckerProjection)
}


def _qualified_name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
        raise ValueError(f"{name} must be an int in [{low}, {high}), got {value!r}")
    return value


def _check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise ValueError("metadata must be a dict with str keys")
    try:
        return json.loads(json.dumps(dict(metadata), allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"metadata must be JSON-able: {error}") from error


def _match_layout(
    what: str,
    expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
    given: Mapping[str, Any],
) -> None:
    """Raise one ValueError naming missing/unexpected keys and shape or dtype mismatches."""
    problems = []
    missing = [name for name in expected if name not in given]
    unexpected = [name for name in given if name not in expected]
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    for name, (shape, dtype) in expected.items():
        tensor = given.get(name)
        if tensor is None:
            continue
        if not torch.is_tensor(tensor):
            problems.append(f"{name}: expected a tensor, got {type(tensor).__name__}")
        elif tuple(tensor.shape) != shape or tensor.dtype != dtype:
            problems.append(
                f"{name}: expected shape {list(shape)} {dtype}, "
                f"got {list(tensor.shape)} {tensor.dtype}"
            )
    if problems:
        raise ValueError(f"{what} does not fit: " + "; ".join(problems))


class Subspace(nn.Module):
    """Wraps `model` so that its floating parameters are θ = θ0 + P·w; only `w` trains.

    θ0 is the model's floating parameters at construction (they are frozen in place:
    ``requires_grad`` is switched off) and D is their total count. Buffers stay buffers of the
    wrapped model and are coded with w. The forward runs the model through
    ``torch.func.functional_call`` with θ, so gradients reach w only. `w` is float32 and starts
    at zero; θ is cast to each parameter's dtype. See the module docstring for the projections.
    """

    def __init__(
        self,
        model: nn.Module,
        dim: int,
        seed: int,
        projection: str = "auto",
        *,
        init_seed: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        self.dim = _check_int("dim", dim, 1, 2**62)
        self.seed = _check_int("seed", seed, 0, 2**63)
        self.init_seed = None if init_seed is None else _check_int("init_seed", init_seed, 0, 2**63)
        parameters = list(model.named_parameters())
        not_real = [name for name, p in parameters if not p.is_floating_point()]
        if not_real:
            raise ValueError(f"only real floating parameters are supported; got {not_real}")
        if not parameters:
            raise ValueError("the model has no parameters to reparametrize")
        self.num_params = sum(p.numel() for _, p in parameters)
        entries = self.num_params * dim
        if projection == "auto":
            projection = "dense" if entries <= DENSE_MAX_ENTRIES else "kronecker"
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be 'auto' or one of {PROJECTIONS}: {projection!r}")
        if projection == "dense" and entries > DENSE_MAX_ENTRIES:
            raise ValueError(
                f"dense projection needs D*d = {entries} <= {DENSE_MAX_ENTRIES} entries; "
                "use 'kronecker' or 'chunked'"
            )
        self.projection = projection
        self.metadata = _check_metadata(metadata)
        for _, p in parameters:
            p.requires_grad_(False)
        self.model = model
        self._param_names = [name for name, _ in parameters]
        self._param_sizes = [p.numel() for _, p in parameters]
        persistent = set(model.state_dict(keep_vars=True))
        self._buffer_names = [name for name, _ in model.named_buffers() if name in persistent]
        device = parameters[0][1].device
        self.projector = _PROJECTION_TYPES[projection](self.num_params, dim, self.seed).to(device)
        self.w = nn.Parameter(torch.zeros(dim, dtype=torch.float32, device=device))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_params={self.num_params}, projection={self.projection!r}, "
            f"seed={self.seed}"
        )

    def _parameters_of_model(self) -> list[torch.nn.Parameter]:
        named = dict(self.model.named_parameters())
        return [named[name] for name in self._param_names]

    def _buffers_of_model(self) -> dict[str, torch.Tensor]:
        named = dict(self.model.named_buffers())
        return {name: named[name] for name in self._buffer_names}

    def theta(self) -> dict[str, torch.Tensor]:
        """θ = θ0 + P·w by parameter name (differentiable w.r.t. w)."""
        delta = self.projector(self.w)
        return {
            name: theta0 + step.view(theta0.shape).to(theta0.dtype)
            for name, theta0, step in zip(
                self._param_names,
                self._parameters_of_model(),
                delta.split(self._param_sizes),
                strict=True,
            )
        }

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.model, self.theta(), args, kwargs)

    def effective_state_dict(self) -> dict[str, torch.Tensor]:
        """The wrapped model's state dict with θ in place of θ0 (detached): the decoded model."""
        with torch.no_grad():
            by_id = {
                id(p): value
                for p, value in zip(self._parameters_of_model(), self.theta().values(), strict=True)
            }
        return {
            name: by_id.get(id(tensor), tensor).detach().clone()
            for name, tensor in self.model.state_dict(keep_vars=True).items()
        }

    # --- what the code word carries -------------------------------------------------------

    def _coded_layout_map(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        entries = {"w": (tuple(self.w.shape), self.w.dtype)}
        for name, buffer in self._buffers_of_model().items():
            entries[f"model.{name}"] = (tuple(buffer.shape), buffer.dtype)
        return entries

    def coded_state(self) -> dict[str, torch.Tensor]:
        """{"w": w, "model.<buffer>": buffer, ...}: everything the code word must carry."""
        state = {"w": self.w.detach().clone()}
        for name, buffer in self._buffers_of_model().items():
            state[f"model.{name}"] = buffer.detach().clone()
        return state

    def load_coded_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a (decoded) `coded_state`; keys, shapes and dtypes must match exactly."""
        _match_layout("coded state", self._coded_layout_map(), state)
        buffers = self._buffers_of_model()
        with torch.no_grad():
            self.w.copy_(state["w"])
            for name, buffer in buffers.items():
                buffer.copy_(state[f"model.{name}"])

    def projection_digest(self) -> str:
        """sha256 of the generated numbers defining P (see the module docstring)."""
        return self.projector.digest()

    def _architecture_layout(self) -> Layout:
        named = dict(self.model.named_parameters())
        named.update(self._buffers_of_model())
        return state_layout({name: named[name] for name in self._param_names + self._buffer_names})

    def theta0(self) -> dict[str, torch.Tensor]:
        """The frozen reference parameters θ0 by name (the wrapped model's own tensors)."""
        return {
            name: p.detach()
            for name, p in zip(self._param_names, self._parameters_of_model(), strict=True)
        }

    def _identity(self) -> dict[str, Any]:
        """The plain fields that define this subspace (shared by the prior and checkpoints)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "module": _qualified_name(self.model),
            "projection": self.projection,
            "seed": self.seed,
            "init_seed": self.init_seed,
            "dim": self.dim,
            "num_params": self.num_params,
        }

    def prior(self) -> FixedPrior:
        """The prior: fingerprint over module class, projection kind, seed, dim, architecture
        layout, θ0 tensors and the projection digest; layout = the coded-state layout."""
        fields = self._identity()
        fingerprinter = Fingerprinter()
        fingerprinter.add_str("subspace")
        fingerprinter.add_json(fields)
        fingerprinter.add_layout(self._architecture_layout())
        fingerprinter.add_state_dict(self.theta0())
        fingerprinter.add_str(self.projection_digest())
        coded_layout = [(n, shape, dtype) for n, (shape, dtype) in self._coded_layout_map().items()]
        return FixedPrior(fingerprinter.hexdigest(), coded_layout, {"kind": "subspace", **fields})

    def fresh(self, build: Callable[[int], nn.Module]) -> Subspace:
        """A new, untrained Subspace like this one around `build(init_seed)`: the decoder's
        skeleton. θ0 is re-derived from the architecture and the declared initialization seed,
        never read from this object; ValueError unless it equals this subspace's θ0 bit for
        bit (with the same projection), since only a re-derivable θ0 is part of the prior."""
        if self.init_seed is None:
            raise ValueError(
                "the subspace declares no init_seed, so its θ0 cannot be re-derived from the "
                "architecture and is not a prior: build it with Subspace(network, dim, seed, "
                "init_seed=S) where network was made right after torch.manual_seed(S)"
            )
        skeleton = Subspace(
            build(self.init_seed),
            self.dim,
            self.seed,
            self.projection,
            init_seed=self.init_seed,
            metadata=self.metadata,
        )
        derived, own = skeleton.theta0(), self.theta0()
        if derived.keys() != own.keys() or not all(
            derived[name].dtype == own[name].dtype
            and derived[name].shape == own[name].shape
            and torch.equal(derived[name].cpu(), own[name].cpu())
            for name in own
        ):
            raise ValueError(
                "the subspace's θ0 is not the architecture's initialization under init_seed "
                f"{self.init_seed}: it cannot be re-derived, so it is not part of the prior"
            )
        if skeleton.prior().fingerprint() != self.prior().fingerprint():
            raise ValueError("the re-derived subspace prior differs from this one's")
        return skeleton

    # --- checkpoints ----------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a checkpoint that `torch.load(path, weights_only=True)` reads (format below).

        ``{"format": "bounds.subspace/1", "module": str, "projection": str, "seed": int,
        "init_seed": int or None, "dim": int, "num_params": int, "projection_digest": str,
        "w": Tensor, "theta0": {param name: Tensor}, "buffers": {buffer name: Tensor},
        "metadata": dict}``
        """
        checkpoint = {
            **self._identity(),
            "projection_digest": self.projection_digest(),
            "w": self.w.detach().cpu().clone(),
            "theta0": {name: t.cpu().clone() for name, t in self.theta0().items()},
            "buffers": {
                name: b.detach().cpu().clone() for name, b in self._buffers_of_model().items()
            },
            "metadata": self.metadata,
        }
        torch.save(checkpoint, os.fspath(path))

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], model: nn.Module | Callable[[], nn.Module]
    ) -> Subspace:
        """Rebuild from a `save` checkpoint and a model (or zero-argument factory) of the same
        architecture; θ0 and buffers from the file are loaded into it."""
        checkpoint = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        return cls.from_checkpoint(checkpoint, model)

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Mapping[str, Any], model: nn.Module | Callable[[], nn.Module]
    ) -> Subspace:
        """`load` for an already-loaded checkpoint dict."""
        if not isinstance(checkpoint, Mapping) or checkpoint.get("format") != CHECKPOINT_FORMAT:
            found = checkpoint.get("format") if isinstance(checkpoint, Mapping) else checkpoint
            raise ValueError(f"not a {CHECKPOINT_FORMAT} checkpoint (format {found!r})")
        required = {
            "module": str,
            "projection": str,
            "seed": int,
            "dim": int,
            "projection_digest": str,
            "w": torch.Tensor,
            "theta0": Mapping,
            "buffers": Mapping,
            "metadata": Mapping,
        }
        wrong = [key for key, kind in required.items() if not isinstance(checkpoint.get(key), kind)]
        if wrong:
            raise ValueError(f"checkpoint fields missing or of the wrong type: {wrong}")
        if not isinstance(model, nn.Module):
            if not callable(model):
                raise ValueError("model must be an nn.Module or a zero-argument factory")
            model = model()
        if _qualified_name(model) != checkpoint["module"]:
            raise ValueError(
                f"checkpoint is for a {checkpoint['module']}, got a {_qualified_name(model)}"
            )
        parameters = dict(model.named_parameters())
        persistent = set(model.state_dict(keep_vars=True))
        buffers = {name: b for name, b in model.named_buffers() if name in persistent}
        _match_layout(
            "checkpoint theta0",
            {name: (tuple(p.shape), p.dtype) for name, p in parameters.items()},
            checkpoint["theta0"],
        )
        _match_layout(
            "checkpoint buffers",
            {name: (tuple(b.shape), b.dtype) for name, b in buffers.items()},
            checkpoint["buffers"],
        )
        with torch.no_grad():
            for name, p in parameters.items():
                p.copy_(checkpoint["theta0"][name])
            for name, b in buffers.items():
                b.copy_(checkpoint["buffers"][name])
        subspace = cls(
            model,
            checkpoint["dim"],
            checkpoint["seed"],
            checkpoint["projection"],
            init_seed=checkpoint.get("init_seed"),
            metadata=checkpoint["metadata"],
        )
        expected_w = {"w": (tuple(subspace.w.shape), subspace.w.dtype)}
        _match_layout("checkpoint w", expected_w, {"w": checkpoint["w"]})
        with torch.no_grad():
            subspace.w.copy_(checkpoint["w"])
        if subspace.projection_digest() != checkpoint["projection_digest"]:
            raise ValueError(
                "the regenerated projection P differs from the one the checkpoint was saved with "
                "(a different torch random generator?); the checkpoint cannot be reproduced here"
            )
        return subspace
