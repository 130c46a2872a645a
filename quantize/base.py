"""Fine-tuned models whose base checkpoint is the prior: only what was trained is coded.

A model fine-tuned from a published base (adapters such as LoRA factors, a new head, or any
tensors added to the base architecture) keeps the base's tensors frozen. Which tensors are
frozen was declared before training, so it belongs to the prior: the base checkpoint, named by
its fingerprint, fixes those tensors exactly, and the code word carries only the others.
A model whose base tensors themselves changed (a full fine-tune) is coded instead as its
difference from the base with :class:`~quantize.priors.ReferencePrior`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .priors import Fingerprinter, FixedPrior, _check_state_dict, state_layout


class FineTuned(nn.Module):
    """`model` with the tensors of `base` frozen at the base's values; the rest is coded.

    Every tensor of `base` must be in the model with the same shape, dtype and exactly the same
    values (a frozen base); every model tensor not in `base` is trained and coded. The prior's
    fingerprint hashes the whole base (canonical encoding of :mod:`quantize.priors`) and the
    names, shapes and dtypes of the coded tensors, so a reader can check both.
    """

    def __init__(
        self, model: nn.Module, base: Mapping[str, torch.Tensor], *, name: str | None = None
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        _check_state_dict(base)
        state = model.state_dict()
        missing = sorted(set(base) - set(state))
        if missing:
            raise ValueError(f"the base has tensors the model lacks: {missing[:5]}")
        changed = [
            key
            for key, value in base.items()
            if value.shape != state[key].shape
            or value.dtype != state[key].dtype
            or not torch.equal(value.cpu(), state[key].detach().cpu())
        ]
        if changed:
            raise ValueError(
                f"{len(changed)} base tensors differ in the model (first: {changed[0]!r}); a "
                "frozen base must be unchanged — code the full difference with a reference "
                "prior (--prior FILE) instead"
            )
        self.model = model
        trained = [key for key in state if key not in base]
        # Coded names are this module's own state-dict names, as for any coded module.
        self._coded_names = [f"model.{key}" for key in trained]
        if not trained:
            raise ValueError("the model has no tensors beyond the base: nothing was trained")
        base_state = {key: value.detach().cpu() for key, value in base.items()}
        self._base, self._name = base_state, name
        fingerprinter = Fingerprinter()
        fingerprinter.add_str("base")
        fingerprinter.add_state_dict(base_state)
        layout = state_layout({f"model.{key}": state[key] for key in trained})
        fingerprinter.add_layout(layout)
        self._prior = FixedPrior(
            fingerprinter.hexdigest(),
            layout,
            {
                "kind": "base",
                "name": name,
                "base_tensors": len(base_state),
                "base_elements": sum(value.numel() for value in base_state.values()),
                "coded_tensors": len(self._coded_names),
            },
        )

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def fresh(self, build: Callable[[int], nn.Module]) -> FineTuned:
        """A new FineTuned like this one around `build(0)` with the base's tensors loaded: the
        decoder's skeleton, whose frozen tensors come from the declared base alone."""
        network = build(0)
        state = network.state_dict()
        missing = sorted(set(self._base) - set(state))
        if missing:
            raise ValueError(f"the architecture lacks tensors of the base: {missing[:5]}")
        network.load_state_dict({**state, **self._base}, strict=True)
        return FineTuned(network, self._base, name=self._name)

    def prior(self) -> FixedPrior:
        return self._prior

    def coded_state(self) -> dict[str, torch.Tensor]:
        """The trained tensors, by this module's state-dict names (``model.…``)."""
        state = self.state_dict()
        return {key: state[key] for key in self._coded_names}

    def load_coded_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Put decoded trained tensors in place; the base tensors stay as they are."""
        if sorted(state) != sorted(self._coded_names):
            raise ValueError("the decoded state does not hold exactly the trained tensors")
        self.load_state_dict(dict(state), strict=False)
