"""Quantization-aware fine-tuning with the straight-through estimator.

Every coded floating parameter p of group g is used in the forward pass as its quantized value
q = θ0 + c_g[i(p)], with i(p) the nearest level of the group's codebook c_g (ties to the lower
level). The backward pass is straight through for p (∂q/∂p := 1; Bengio, Léonard & Courville
2013, arXiv:1308.3432) and exact for the codebook (q is a gather of c_g), so both the latent
weights and the codebook values train. Afterwards the quantized values are coded again with the
same configuration and the trained codebooks, giving a new :class:`~quantize.code.Code`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional

from .code import Code, reference_tensors, work_dtype
from .compress import QuantConfig, coded_state, encode_state
from .layout import spec_of


def finetune(
    model: nn.Module,
    code: Code,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    epochs: int,
    lr: float,
    *,
    prior: Any = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> Code:
    """Train ``model`` (in place: its latent weights) with snapped weights; return the new Code.

    ``code`` must code ``model`` (same layout); ``prior`` defaults to the module's own
    (``model.prior()``) or the one ``code`` was made with. ``loader`` yields (inputs, targets)
    batches and is iterated once per epoch; ``loss_fn(outputs, targets)`` defaults to
    cross-entropy; Adam with learning rate ``lr`` updates the latent weights and the codebooks.
    ``progress(epoch, mean loss)`` is called after each epoch.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int ≥ 0, got {epochs!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    loss_fn = loss_fn or functional.cross_entropy
    if prior is None and not hasattr(model, "coded_state"):
        prior = code.prior  # the prior the word was made with, if any
    state, prior = coded_state(model, prior)
    if code.prior_fingerprint is not None and prior.fingerprint() != code.prior_fingerprint:
        raise ValueError("the prior is not the one the code was made with")
    layout = tuple(spec_of(name, tensor) for name, tensor in state.items())
    if layout != code.layout:
        raise ValueError("the code does not code this model (names, shapes or dtypes differ)")
    references = reference_tensors(prior, layout) if code.contents.uses_reference else {}
    parameters = dict(model.named_parameters())
    group_of = {
        layout[index].name: number
        for number, group in enumerate(code.groups)
        for index in group.members
        if layout[index].name in parameters
    }
    codebooks = {
        number: nn.Parameter(
            torch.from_numpy(code.groups[number].codebook).to(_group_dtype(code, number))
        )
        for number in sorted(set(group_of.values()))
    }

    def snapped() -> dict[str, torch.Tensor]:
        return {
            name: _snap(parameters[name], references.get(name), codebooks[number])
            for name, number in group_of.items()
        }

    optimizer = torch.optim.Adam([parameters[n] for n in group_of] + list(codebooks.values()), lr)
    model.train()
    for epoch in range(epochs):
        total, batches = 0.0, 0
        for inputs, targets in loader:
            optimizer.zero_grad()
            loss = loss_fn(functional_call(model, snapped(), (inputs,)), targets)
            loss.backward()
            optimizer.step()
            total, batches = total + float(loss.detach()), batches + 1
        if progress is not None:
            progress(epoch, total / max(batches, 1))
    with torch.no_grad():
        final_state, _ = coded_state(model, prior)
        final_state.update({name: value.detach() for name, value in snapped().items()})
    fixed = {number: book.detach().to(torch.float64).numpy() for number, book in codebooks.items()}
    return encode_state(
        final_state,
        prior,
        _config_of(code),
        grid_index=code.grid_index,
        grid_size=code.grid_size,
        codebooks=fixed,
    )


def _group_dtype(code: Code, number: int) -> torch.dtype:
    dtypes = {work_dtype(code.layout[index].dtype) for index in code.groups[number].members}
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _snap(latent: torch.Tensor, reference: torch.Tensor | None, book: torch.Tensor) -> torch.Tensor:
    """θ0 + book[nearest level] with value from the codebook and straight-through gradient."""
    levels, order = torch.sort(book.detach())
    residual = latent.detach().to(book.dtype)
    if reference is not None:
        residual = residual - reference.to(book.dtype)
    nearest = order[torch.bucketize(residual, (levels[1:] + levels[:-1]) / 2)]
    quantized = book[nearest]
    if reference is not None:
        quantized = quantized + reference.to(book.dtype)
    return quantized.to(latent.dtype) + (latent - latent.detach())


def _config_of(code: Code) -> QuantConfig:
    """The code's configuration; for a parsed word, levels = its largest codebook, k-means."""
    config = code.config
    sizes = [len(group.codebook) for group in code.groups] or [1]
    return QuantConfig(
        levels=config["levels"] or int(np.max(sizes)),
        scheme=config["scheme"] or "kmeans",
        coder=config["coder"] or "auto",
        groups=config["groups"],
        precision=config["precision"],
    )
