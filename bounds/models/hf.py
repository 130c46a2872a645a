"""Hugging Face causal language models, built from a config or read from a local directory.

Needs the optional `transformers` package (``pip install -e ".[hf]"``). Nothing is ever
downloaded: `causal_lm` builds a model from configuration values alone, and `load_directory`
reads a model saved with ``save_pretrained`` with ``local_files_only=True``. The models map
token ids [B, T] to an output whose ``.logits`` are [B, T, V], which
`bounds.tasks.language.evaluate` reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ValueError(
            'Hugging Face models need the transformers package: pip install -e ".[hf]"'
        ) from None
    return transformers


def causal_lm(model_type: str = "gpt2", seed: int | None = None, **config: Any) -> nn.Module:
    """A randomly initialised causal LM of `model_type` with the given config values.

    For example ``causal_lm("gpt2", n_layer=12, n_head=12, n_embd=768)`` is GPT-2 small's
    shape (124M parameters). With `seed`, the weights come from that seed without touching
    the caller's random state.
    """
    transformers = _transformers()
    try:
        configuration = transformers.AutoConfig.for_model(model_type, **config)
    except (ValueError, TypeError) as error:
        raise ValueError(f"cannot build a {model_type!r} config: {error}") from None
    if seed is None:
        return transformers.AutoModelForCausalLM.from_config(configuration)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transformers.AutoModelForCausalLM.from_config(configuration)


def is_model_directory(path: str | os.PathLike[str]) -> bool:
    """True for a directory written by ``save_pretrained`` (it holds config.json)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def load_directory(path: str | os.PathLike[str]) -> nn.Module:
    """The causal LM saved in a local directory (never contacting the hub). A config that
    names modelling code of its own (``auto_map``) is refused: the decoder rebuilds only
    architectures whose code ships with transformers, never code read from the directory."""
    transformers = _transformers()
    try:
        config = json.loads(Path(path, "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the config of {str(path)!r}: {error}") from None
    if not isinstance(config, dict) or "auto_map" in config:
        raise ValueError(
            f"the model directory {str(path)!r} names modelling code of its own (auto_map); "
            "only architectures built into transformers can be rebuilt by the decoder"
        )
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, use_safetensors=None
        )
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise ValueError(f"cannot load the model directory {str(path)!r}: {first}") from None
