"""Turning command-line specs into models, data and priors.

Specs:
- architecture: ``module:factory`` or ``module:factory:key=value,key=value`` (values are
  Python literals; anything else is a string).
- data: ``mnist1d`` or ``mnist1d:n=60000,m=10000,seed=0,split=train``; ``file.npz``
  (arrays x, y); ``file.pt`` (a dict with tensors x, y, or a pair); ``module:function``
  (returns a Dataset or DataLoader; same key=value options as factories).
- prior: ``init:SEED`` (the architecture's initialization under that seed) or a state-dict
  file of reference weights θ0 (a pretrained base).
Every failure is a ValueError with one clear sentence.
"""

from __future__ import annotations

import functools
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from bounds.pipeline.decoder import parse_options, resolve_callable, source_digest

SUBSPACE_FORMAT = "bounds.subspace/1"


def build_architecture(spec: str) -> nn.Module:
    """Call the factory named by an architecture spec and check it returns an nn.Module."""
    factory, options = resolve_callable(spec, "architecture")
    try:
        model = factory(**options)
    except TypeError as error:  # an option the factory does not take, a missing argument
        raise ValueError(f"cannot build the architecture {spec!r}: {error}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"the architecture factory {spec!r} did not return an nn.Module")
    return model


def _existing_file(path: str | os.PathLike[str], what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} does not exist or is not a file")
    return path


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _torch_load(path: Path, trust_pickle: bool, what: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error):
            raise ValueError(f"{what} {str(path)!r} is not a readable PyTorch file") from None
        if not trust_pickle:
            raise ValueError(
                f"{what} {str(path)!r} holds pickled Python objects, and loading them would run "
                "code from the file. Save a state dict instead (torch.save(model.state_dict(), "
                "path)) and pass --arch, or pass --trust-pickle if you trust the file."
            ) from None
    except Exception:  # noqa: BLE001 - torch raises many types on a file that is not its own
        raise ValueError(f"{what} {str(path)!r} is not a readable PyTorch file") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any failure of a trusted unpickle is reported
        raise ValueError(f"cannot unpickle {what} {str(path)!r}: {error}") from None


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """load_state_dict(strict=True) with one message naming every mismatch."""
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source} is not a state dict (name → tensor)")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{name} {tuple(state[name].shape)} vs {tuple(expected[name].shape)}"
        for name in sorted(set(state) & set(expected))
        if state[name].shape != expected[name].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if shapes:
        problems.append(f"shape mismatches (file vs architecture): {shapes}")
    if problems:
        raise ValueError(f"{source} does not fit the architecture: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model


@dataclass
class LoadedModel:
    """A model ready to certify, the spec that builds its skeleton (None: the model declares
    it, e.g. a Hugging Face config), and what kind of file it came from."""

    model: nn.Module
    architecture: str | None
    kind: str


def load_model(
    path: str,
    arch: str | None = None,
    *,
    trust_pickle: bool = False,
    loader: str | None = None,
    opaque: bool = False,
) -> LoadedModel:
    """Load MODEL: a state dict or .safetensors (with --arch), a Subspace checkpoint, or a
    Hugging Face ``save_pretrained`` directory (local files only). With `loader`
    (``module:function``), ``function(path)`` builds the model from the file.

    A TorchScript archive or (only with `trust_pickle`) a pickled nn.Module carries state that
    no declared architecture rebuilds, so it is accepted only as an `opaque` code word (the
    whole file is the word and is counted); otherwise it is refused."""
    from bounds.models import hf

    if loader is None and hf.is_model_directory(path):
        # Its architecture is its config, which the decoder reads off the model.
        return LoadedModel(hf.load_directory(path), None, "Hugging Face directory")
    file = _existing_file(path, "model file")
    if loader is not None:
        function, options = resolve_callable(loader, "loader")
        model = function(str(file), **options)
        if not isinstance(model, nn.Module):
            raise ValueError(f"the loader {loader!r} did not return an nn.Module")
        return LoadedModel(model, arch or f"loader:{loader}", "loaded by the declared loader")
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(file))
        except (SafetensorError, OSError) as error:
            raise ValueError(
                f"model file {path!r} is not a valid safetensors file: {error}"
            ) from None
        return _from_state_dict(state, arch, path)
    if _is_torchscript(file):
        if not opaque:
            raise ValueError(_not_rebuildable(path, "a TorchScript archive"))
        with warnings.catch_warnings():  # torch marks TorchScript deprecated; it still loads
            warnings.simplefilter("ignore", DeprecationWarning)
            return LoadedModel(
                torch.jit.load(str(file), map_location="cpu"), f"torchscript:{path}", "torchscript"
            )
    content = _torch_load(file, trust_pickle, "model file")
    if isinstance(content, nn.Module):
        if not opaque:
            raise ValueError(_not_rebuildable(path, "a pickled module"))
        return LoadedModel(content, type(content).__qualname__, "pickled module")
    if isinstance(content, dict) and content.get("format") == SUBSPACE_FORMAT:
        return _subspace(content, arch, path)
    if isinstance(content, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(content.get(key), dict):
                content = content[key]
                break
        return _from_state_dict(content, arch, path)
    raise ValueError(f"model file {path!r} holds a {type(content).__name__}, not a model")


def _not_rebuildable(path: str, what: str) -> str:
    return (
        f"model file {path!r} is {what}: it can carry state that no declared architecture "
        "rebuilds, so it is certified only as a whole (pass --code-file: K counts every byte "
        "of the file); or save a state dict and pass --arch"
    )


def _from_state_dict(state: dict, arch: str | None, path: str) -> LoadedModel:
    if arch is None:
        raise ValueError(
            f"model file {path!r} is a state dict; pass --arch module:factory to build the model"
        )
    model = load_state_into(build_architecture(arch), state, f"model file {path!r}")
    return LoadedModel(model, arch, "state dict")


def _subspace(checkpoint: dict, arch: str | None, path: str) -> LoadedModel:
    from quantize import Subspace

    metadata = checkpoint.get("metadata") or {}
    if arch is None and metadata.get("arch"):
        options = metadata.get("arch_kwargs") or {}
        arch = metadata["arch"] + (
            ":" + ",".join(f"{k}={v!r}" for k, v in options.items()) if options else ""
        )
    if arch is None:
        raise ValueError(
            f"subspace checkpoint {path!r} names no architecture; pass --arch module:factory"
        )
    return LoadedModel(
        Subspace.from_checkpoint(checkpoint, build_architecture(arch)), arch, "subspace checkpoint"
    )


def load_data(spec: str, *, default_split: str = "train", trust_pickle: bool = False):
    """A Dataset (or DataLoader) for a data spec; see the module docstring for the forms."""
    name, _, option_text = spec.partition(":")
    if name == "mnist1d":
        from bounds.tasks.classification.data import MNIST1DSpec, mnist1d

        options = parse_options(option_text, "mnist1d")
        split = options.pop("split", default_split)
        unknown = set(options) - {"n", "m", "seed"}
        if unknown:
            raise ValueError(f"unknown mnist1d options {sorted(unknown)}; use n, m, seed, split")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in options.values()):
            raise ValueError("mnist1d options n, m and seed must be integers")
        return mnist1d(MNIST1DSpec(**options), split=split)
    if spec.endswith(".npz"):
        file = _existing_file(spec, "data file")
        try:
            with np.load(file, allow_pickle=False) as arrays:
                if "x" not in arrays.files or "y" not in arrays.files:
                    raise ValueError(f"data file {spec!r} must hold arrays named x and y")
                x, y = arrays["x"], arrays["y"]
        except (OSError, zipfile.BadZipFile) as error:
            raise ValueError(f"data file {spec!r} is not a readable .npz file: {error}") from None
        return _pair_dataset(torch.from_numpy(x), torch.from_numpy(y), spec)
    if spec.endswith((".pt", ".pth")):
        content = _torch_load(_existing_file(spec, "data file"), trust_pickle, "data file")
        if isinstance(content, Dataset | DataLoader):
            return content
        if isinstance(content, dict) and "x" in content and "y" in content:
            return _pair_dataset(content["x"], content["y"], spec)
        if isinstance(content, list | tuple) and len(content) == 2:
            return _pair_dataset(content[0], content[1], spec)
        raise ValueError(f"data file {spec!r} must hold {{'x': tensor, 'y': tensor}} or (x, y)")
    if ":" in spec:
        function, options = resolve_callable(spec, "data function")
        data = function(**options)
        if not isinstance(data, Dataset | DataLoader):
            raise ValueError(f"the data function {spec!r} must return a Dataset or DataLoader")
        return data
    raise ValueError(
        f"unknown data spec {spec!r}: use mnist1d[:options], a .npz or .pt file, or module:function"
    )


def _pair_dataset(x: Any, y: Any, source: str) -> TensorDataset:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError(f"data in {source!r} must be tensors or arrays")
    if len(x) != len(y):
        raise ValueError(f"data in {source!r} has {len(x)} inputs but {len(y)} labels")
    if x.dtype == torch.float64:
        x = x.float()
    return TensorDataset(x, y)


def describe_loader(loader: str | None, arch: str | None) -> dict[str, Any]:
    """The decoder of an opaque code word, as a prior: what it is and a sha256 over its
    spec and the source files of the modules it comes from, so a reader can audit it."""
    import hashlib

    from bounds import __version__

    digest = hashlib.sha256()
    parts: list[str] = []
    for what, spec in (("loader", loader), ("architecture", arch)):
        if spec is None:
            continue
        function, _ = resolve_callable(spec, what)
        digest.update(f"{what}|{spec}|".encode())
        source_digest(function, digest)
        parts.append(f"{what} {spec}")
    decoder = " + ".join(parts) or "the built-in model loaders"
    digest.update(f"bounds {__version__}".encode())
    return {
        "kind": "decoder",
        "decoder": decoder,
        "note": "the code word is the file itself; its decoder is the declared loader, "
        "which is part of the prior (fixed before the data, named by this fingerprint)",
        "fingerprint": digest.hexdigest(),
    }


def load_corpus(
    spec: str,
    *,
    eod: int | None = None,
    offsets: str | os.PathLike[str] | None = None,
    dtype: str | None = None,
    default_split: str = "train",
):
    """A TokenCorpus: ``stdlib[:split=…,seed=…,held_out=…,max_file_bytes=…]`` (the standard
    library's source files as bytes) or a ``.npy``/``.bin`` token stream."""
    name, _, option_text = spec.partition(":")
    if name == "stdlib":
        from bounds.tasks.language.stdlib import stdlib_corpus

        stream_options = {"--eod": eod, "--offsets": offsets, "--token-dtype": dtype}
        given = [option for option, value in stream_options.items() if value is not None]
        if given:
            raise ValueError(
                f"{', '.join(given)} describe a token file; the stdlib corpus has its own documents"
            )
        options = parse_options(option_text, "stdlib")
        split = options.pop("split", default_split)
        unknown = set(options) - {"seed", "held_out", "max_file_bytes"}
        if unknown:
            raise ValueError(
                f"unknown stdlib options {sorted(unknown)}; use split, seed, held_out, "
                "max_file_bytes"
            )
        return stdlib_corpus(split, **options)
    if spec.endswith((".npy", ".bin")):
        from bounds.tasks.language.tokens import load_tokens

        _existing_file(spec, "token file")
        if offsets is not None:
            _existing_file(offsets, "offsets file")
        return load_tokens(spec, dtype=dtype, eod=eod, offsets=offsets)
    raise ValueError(f"unknown token data spec {spec!r}: use stdlib[:options] or a .npy/.bin file")


def load_prior(
    spec: str | None, arch: str | None, model: nn.Module | None = None, *, rebuild: bool = False
):
    """(model, prior) for a prior spec: ``init:SEED``, a state-dict file of reference weights,
    or ``base:FILE`` (a frozen base: the model is wrapped so that only the tensors not in the
    base are coded). `rebuild`: the model is a skeleton to decode into (``bounds verify``),
    so a base is loaded into it first."""
    if spec is None:
        return model, None
    from quantize import InitPrior, ReferencePrior
    from quantize.base import FineTuned

    if spec.startswith("base:"):
        path = spec.removeprefix("base:")
        base = _state_file(path, "base checkpoint")
        if rebuild:
            load_state_into(model, {**model.state_dict(), **base}, f"base checkpoint {path!r}")
        return FineTuned(model, base, name=os.path.basename(path)), None

    if spec.startswith("init:"):
        if arch is None:
            raise ValueError("--prior init:SEED needs --arch (the factory it initializes)")
        try:
            seed = int(spec.removeprefix("init:"))
        except ValueError:
            raise ValueError(f"--prior init:SEED needs an integer seed, got {spec!r}") from None
        factory, options = resolve_callable(arch, "architecture")
        return model, InitPrior(functools.partial(factory, **options), seed)
    return model, ReferencePrior(_state_file(spec, "prior file"), name=os.path.basename(spec))


def _state_file(path: str, what: str) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or PyTorch file (never unpickling code)."""
    file = _existing_file(path, what)
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{what} {path!r} is not a valid safetensors file: {error}") from None
    content = _torch_load(file, False, what)
    if not isinstance(content, dict) or not all(
        isinstance(v, torch.Tensor) for v in content.values()
    ):
        raise ValueError(f"{what} {path!r} must hold a state dict (name → tensor)")
    return content


def pool_inputs(spec: str, *, trust_pickle: bool = False) -> torch.Tensor:
    """The inputs of a data spec, stacked (its labels are not used): an input pool."""
    data = load_data(spec, trust_pickle=trust_pickle)
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0]
    try:
        return torch.stack([dataset[index][0] for index in range(len(dataset))])
    except (TypeError, IndexError, RuntimeError) as error:
        raise ValueError(
            f"the pool {spec!r} is not a dataset of (input, label) pairs: {error}"
        ) from None


def default_pool(data_spec: str, size: int) -> str:
    """For built-in MNIST-1D training data, MNIST-1D inputs drawn with the next seed: a pool
    independent of the training sample. Other data need an explicit --pool."""
    name, _, option_text = data_spec.partition(":")
    if name != "mnist1d":
        raise ValueError("--code requential needs --pool (inputs fixed before the training data)")
    seed = parse_options(option_text, "mnist1d").get("seed", 0)
    return f"mnist1d:n={size},m=1,seed={int(seed) + 1}"


@dataclass(frozen=True)
class Requential:
    """The requential options of a command line: variant, pool spec, label grid, seeds."""

    variant: str
    pool: str | None
    labels: tuple[int, ...] | None
    init_seed: int
    seed: int

    def family(self, teacher: nn.Module, student_arch: str, data_spec: str):
        """The requential code family of one student (`bounds.pipeline.codes.RequentialCodes`),
        its classes read off the teacher's output on the pool."""
        from quantize.requential import Schedule

        grid = {} if self.labels is None else {"label_counts": self.labels}
        schedule = Schedule(variant=self.variant, **grid)
        pool_spec = self.pool or default_pool(data_spec, max(schedule.label_counts))
        inputs = pool_inputs(pool_spec)
        with torch.no_grad():
            teacher.eval()
            output = teacher(inputs[:1])
        if output.ndim != 2:
            raise ValueError(
                f"the teacher must map inputs to [batch, classes] logits, got {tuple(output.shape)}"
            )
        return _requential_codes(
            student_arch, pool_spec, inputs, schedule, self.init_seed, self.seed, output.shape[1]
        )

    def language_family(
        self, teacher: nn.Module, student_arch: str, *, sequence_length: int, start_token: int
    ):
        """The requential code family of one language-model student: it generates its own
        sequences (`quantize.requential_lm`), its vocabulary read off the teacher's logits."""
        import dataclasses

        from quantize.requential_lm import DEFAULT_SCHEDULE

        grid = {} if self.labels is None else {"label_counts": self.labels}
        schedule = dataclasses.replace(DEFAULT_SCHEDULE, variant=self.variant, **grid)
        if isinstance(start_token, bool) or start_token < 0:
            raise ValueError(f"--start-token must be a token id ≥ 0, got {start_token}")
        with torch.no_grad():
            teacher.eval()
            output = teacher(torch.full((1, 1), start_token, dtype=torch.long))
        logits = output if torch.is_tensor(output) else getattr(output, "logits", None)
        if not torch.is_tensor(logits) or logits.ndim != 3:
            raise ValueError("the teacher must map token ids [batch, length] to logits [B, T, V]")
        if start_token >= logits.shape[2]:
            raise ValueError(
                f"--start-token {start_token} is not an id of the teacher's {logits.shape[2]} "
                "outputs"
            )
        return _sequence_codes(
            student_arch,
            schedule,
            self.init_seed,
            self.seed,
            int(logits.shape[2]),
            sequence_length,
            start_token,
        )


def default_start(data_spec: str, eod: int | None) -> int:
    """The start token of generated sequences when none is given: the end-of-document id of
    the training data (--eod, or the stdlib corpus's). Other data need --start-token."""
    if eod is not None:
        return eod
    if data_spec.partition(":")[0] == "stdlib":
        from bounds.tasks.language.stdlib import END_OF_DOCUMENT

        return END_OF_DOCUMENT
    raise ValueError("--code requential with --task lm needs --start-token (or --eod)")


def requential_from_certificate(prior: dict):
    """The requential code family a certificate's prior section declares (`bounds verify`):
    rebuilt from the student spec, the schedule and the other fields, and refused unless its
    fingerprint is the one the certificate states."""
    from quantize.requential import Schedule

    language = prior.get("kind") == "requential-lm"
    keys = ("vocab_size", "sequence_length", "start_token") if language else ("classes",)
    try:
        spec = prior["student"]["spec"]
        pool_spec = None if language else prior["pool_spec"]
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in prior["schedule"].items()}
        init_seed, seed, *numbers = (int(prior[key]) for key in ("init_seed", "seed", *keys))
        schedule = Schedule(**fields)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"the certificate's requential prior is not readable: {error!r}") from None
    if language:
        family = _sequence_codes(spec, schedule, init_seed, seed, *numbers)
    else:
        inputs = pool_inputs(pool_spec)
        family = _requential_codes(spec, pool_spec, inputs, schedule, init_seed, seed, *numbers)
    if family.prior.fingerprint() != prior.get("fingerprint"):
        raise ValueError(
            "the requential prior rebuilt from the certificate (student, schedule, seeds, "
            f"{'sequence length, start token' if language else 'pool'}) has another "
            "fingerprint than the certificate states"
        )
    return family


def _sequence_codes(spec, schedule, init_seed, seed, vocab_size, sequence_length, start_token):
    from quantize.requential_lm import SequencePrior

    return _codes(
        SequencePrior,
        spec,
        init_seed,
        schedule=schedule,
        seed=seed,
        vocab_size=vocab_size,
        sequence_length=sequence_length,
        start_token=start_token,
    )


def _codes(kind, spec: str, init_seed: int, *, pool_spec: str | None = None, **fields):
    """RequentialCodes of a `kind` of prior for the student `spec` (built once first)."""
    from bounds.pipeline.codes import RequentialCodes

    student = _student(spec, init_seed)
    prior = kind(student.build, student.fingerprint, student.spec, init_seed=init_seed, **fields)
    return RequentialCodes(prior, pool_spec=pool_spec)


def _student(spec: str, init_seed: int):
    """The student's declared architecture, built once before any encoding: an option the
    factory does not take is a bad input."""
    from bounds.pipeline.decoder import Architecture

    student = Architecture.from_spec(spec)
    try:
        student.build(init_seed)
    except TypeError as error:
        raise ValueError(f"cannot build the student {spec!r}: {error}") from None
    return student


def _requential_codes(spec, pool_spec, inputs, schedule, init_seed, seed, classes):
    from quantize.requential import RequentialPrior

    return _codes(
        RequentialPrior,
        spec,
        init_seed,
        pool_spec=pool_spec,
        pool=inputs,
        schedule=schedule,
        seed=seed,
        classes=int(classes),
    )
