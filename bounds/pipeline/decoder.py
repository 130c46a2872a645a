"""The decoder owns the model: the evaluated network is built from a declared architecture.

A bound is about the model that the code word decodes to under a prior fixed before the data
(DESIGN.md). So the model that is evaluated is never the trained object: it is a fresh
*skeleton* built by a declared factory (``module:factory[:key=value,...]``, a zero-argument
callable, or a Hugging Face config), wrapped as the trained model was (a random subspace whose
θ0 is re-derived from the factory and a declared seed, a frozen base read from a declared
file), into which the decoded tensors are loaded. Whatever the trained object carries beyond
its coded tensors (plain tensor attributes, non-persistent buffers, Python attributes, a θ0
read from a checkpoint) never reaches the evaluated model.

The factory is part of the prior: the certificate names it by a sha256 over its spec and the
source file it is defined in, so a reader can audit that it was fixed before the data (a
factory that hard-codes a table of training labels would be visible there).
"""

from __future__ import annotations

import ast
import copy
import hashlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Attribute by which a built-in factory names the spec that rebuilds its network.
SPEC_ATTRIBUTE = "bounds_architecture"


def parse_options(text: str, what: str) -> dict[str, Any]:
    """``key=value,key=value`` → dict; values are Python literals, anything else a string."""
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what} options must look like key=value, got {item!r}")
        try:
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = value.strip()
    return options


def resolve_callable(spec: str, what: str) -> tuple[Callable[..., Any], dict[str, Any]]:
    """Import ``module:name[:options]`` and return the callable with its keyword options."""
    module_name, sep, rest = spec.partition(":")
    name, _, option_text = rest.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"{what} must look like module:function, got {spec!r}")
    if os.getcwd() not in sys.path:  # let users point at a module next to their data
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import module {module_name!r} for the {what}: {error}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ValueError(f"module {module_name!r} has no callable {name!r} (the {what})")
    return function, parse_options(option_text, what)


def source_digest(function: Callable[..., Any], digest: Any) -> None:
    """Add the bytes of the source file that defines `function` (if it has one) to `digest`."""
    while hasattr(function, "func"):  # functools.partial
        function = function.func
    try:
        source = inspect.getsourcefile(function)
    except TypeError:  # built-in or C-defined: no source file to name
        source = None
    if source is not None and Path(source).is_file():
        digest.update(Path(source).read_bytes())


@dataclass(frozen=True)
class Architecture:
    """A declared network factory, part of the prior.

    `spec` names it for people; `fingerprint` is sha256 over the spec and the source file the
    factory is defined in. `build(seed)` calls the factory with torch's random generator seeded
    (and the caller's generator state untouched), so anything random that the decoded tensors
    do not overwrite is reproducible.
    """

    spec: str
    factory: Callable[[], nn.Module]
    fingerprint: str

    @classmethod
    def from_spec(cls, spec: str) -> Architecture:
        """``module:factory[:key=value,...]``."""
        function, options = resolve_callable(spec, "architecture")
        return cls._named(spec, lambda: function(**options), function)

    @classmethod
    def from_callable(cls, factory: Callable[[], nn.Module]) -> Architecture:
        """A zero-argument callable that builds the untrained network."""
        from quantize.priors import describe_callable

        return cls._named(describe_callable(factory), factory, factory)

    @classmethod
    def from_hf_config(cls, config: Any) -> Architecture:
        """A Hugging Face causal LM built from its config (no weights read, nothing fetched)."""
        import transformers

        if getattr(config, "auto_map", None):
            raise ValueError("the config names modelling code of its own (auto_map); refused")
        text = config.to_json_string(use_diff=False)
        digest = hashlib.sha256(b"bounds.pipeline.decoder/1|hf|")
        digest.update(f"transformers {transformers.__version__}|".encode())
        digest.update(text.encode())

        def factory() -> nn.Module:
            return transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config))

        return cls(f"hf:{config.model_type}", factory, digest.hexdigest())

    @classmethod
    def _named(
        cls, spec: str, factory: Callable[[], nn.Module], function: Callable[..., Any]
    ) -> Architecture:
        digest = hashlib.sha256(f"bounds.pipeline.decoder/1|{spec}|".encode())
        source_digest(function, digest)
        return cls(spec, factory, digest.hexdigest())

    @classmethod
    def declared(cls, architecture: Any, model: nn.Module) -> Architecture:
        """The architecture of `model`: `architecture` as given (a spec, a callable or an
        Architecture), else the spec a built-in factory recorded on the network, else its
        Hugging Face config; ValueError if none is declared."""
        if isinstance(architecture, Architecture):
            return architecture
        if isinstance(architecture, str):
            return cls.from_spec(architecture)
        if callable(architecture) and not isinstance(architecture, nn.Module):
            return cls.from_callable(architecture)
        if architecture is not None:
            raise ValueError(
                "architecture must be a 'module:factory[:key=value,...]' spec or a "
                f"zero-argument factory, got {type(architecture).__name__}"
            )
        network = wrapped_network(model)
        spec = getattr(network, SPEC_ATTRIBUTE, None)
        if isinstance(spec, str):
            return cls.from_spec(spec)
        config = getattr(network, "config", None)
        if hasattr(config, "to_json_string") and hasattr(config, "model_type"):
            return cls.from_hf_config(config)
        raise ValueError(
            f"the architecture of the {type(network).__name__} is not declared: pass "
            "architecture='module:factory[:key=value,...]' (or a zero-argument factory) that "
            "builds the untrained network; the evaluated model is built from it and the "
            "decoded tensors, never from the trained object"
        )

    def build(self, seed: int = 0) -> nn.Module:
        """A fresh network from the factory under `seed`."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = self.factory()
        if not isinstance(network, nn.Module):
            raise ValueError(f"the architecture {self.spec!r} did not build an nn.Module")
        return network

    def describe(self) -> dict[str, str]:
        return {"spec": self.spec, "fingerprint": self.fingerprint}


def wrapped_network(model: nn.Module) -> nn.Module:
    """The network a coding wrapper (a subspace, a frozen base) wraps; else `model` itself."""
    if hasattr(model, "coded_state") and isinstance(getattr(model, "model", None), nn.Module):
        return model.model
    return model


def coded_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a code word carries of `model`: its `coded_state()` if it declares one, else its
    whole state dict; every entry must be a tensor (extra state cannot be coded)."""
    state = model.coded_state() if hasattr(model, "coded_state") else model.state_dict()
    wrong = [name for name, value in state.items() if not isinstance(value, torch.Tensor)]
    if wrong:
        raise ValueError(f"the model's state holds non-tensor entries {wrong[:5]}; cannot code it")
    return state


def _layout(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {name: (tuple(value.shape), str(value.dtype)) for name, value in state.items()}


class Decoder:
    """Builds the evaluated model from the declared architecture and the decoded tensors alone.

    `model` (the trained object, or any model of the same kind) tells only the kind of
    skeleton: a coding wrapper rebuilds itself around a fresh network (``model.fresh(build)``,
    which re-derives its prior and refuses one that differs), a plain network is built as it
    is. The skeleton must code exactly the tensors the trained model codes (names, shapes,
    dtypes). Each call returns a new copy of the skeleton holding the decoded tensors.
    """

    def __init__(self, model: nn.Module, architecture: Any = None) -> None:
        self.architecture = Architecture.declared(architecture, model)
        if hasattr(model, "fresh"):
            skeleton = model.fresh(self.architecture.build)
        else:
            skeleton = self.architecture.build()
        if skeleton is model:
            raise ValueError("the architecture returned the trained object instead of a new one")
        expected, built = _layout(coded_tensors(model)), _layout(coded_tensors(skeleton))
        if expected != built:
            differing = sorted(set(expected) ^ set(built)) or [
                name for name in expected if expected[name] != built[name]
            ]
            raise ValueError(
                f"the architecture {self.architecture.spec!r} does not build the model that is "
                f"certified: its tensors differ (first: {differing[:3]})"
            )
        self.skeleton = skeleton

    def __call__(self, state: Mapping[str, torch.Tensor]) -> nn.Module:
        decoded = copy.deepcopy(self.skeleton)
        if hasattr(decoded, "load_coded_state"):
            decoded.load_coded_state(state)
        else:
            decoded.load_state_dict(dict(state), strict=True)
        return decoded
