"""The training step's two checks without a host sync per step on an accelerator.

The core stops on a non-finite loss and re-initialises a discriminator whose loss falls under
``d_reinit_floor``. Both need a loss value on the host, and reading a GPU value there
(``bool(t)``, ``t.item()``) waits for every queued kernel: the CPU can no longer run ahead
and queue the next step while the GPU computes this one. On CPU a read costs nothing, so the
core checks every step at once. On an accelerator it hands each step's values to
:class:`DeferredStepChecks`, which keeps them on the device and reads them all with one sync
every ``interval`` steps (the trainer's ``log_every_n_steps``) and before every validation
and checkpoint, so no checkpoint is written after an unchecked step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class StepPlace:
    """Where a check ran: the trainer's global step, epoch and batch index at that moment."""

    global_step: int
    epoch: int
    batch: int


@dataclass(frozen=True)
class NonFinite:
    """The first check with a NaN or infinite term: where, and every term's value there."""

    place: StepPlace
    values: dict[str, float]


def stacked_terms(terms: dict[str, Tensor]) -> Tensor:
    """The step's loss terms as one detached float32 vector (one finiteness test for all)."""
    return torch.stack([value.detach().float() for value in terms.values()])


class DeferredStepChecks:
    """Loss values of the steps since the last read, kept on the device until read.

    A step adds one stacked tensor of its terms per check (:meth:`add_terms`) and its
    discriminator loss (:meth:`add_discriminator_loss`); nothing is read until
    :meth:`first_non_finite` and :meth:`lowest_discriminator_loss`, one sync each.
    """

    def __init__(self) -> None:
        self._terms: list[tuple[StepPlace, tuple[str, ...], Tensor]] = []
        self._discriminator_losses: list[Tensor] = []

    @property
    def steps(self) -> int:
        """Training steps recorded since the last read."""
        return len(self._discriminator_losses)

    def add_terms(self, terms: dict[str, Tensor], place: StepPlace) -> None:
        self._terms.append((place, tuple(terms), stacked_terms(terms)))

    def add_discriminator_loss(self, loss: Tensor) -> None:
        self._discriminator_losses.append(loss.detach().float())

    def first_non_finite(self) -> NonFinite | None:
        """The earliest recorded check with a non-finite term, or None; forgets the terms."""
        records, self._terms = self._terms, []
        if not records:
            return None
        finite = torch.stack([torch.isfinite(values).all() for _, _, values in records])
        if bool(finite.all()):  # the one host sync of this read
            return None
        place, names, values = records[int((~finite).nonzero()[0])]
        return NonFinite(place, dict(zip(names, values.tolist(), strict=True)))

    def lowest_discriminator_loss(self) -> float | None:
        """The lowest discriminator loss since the last read, or None; forgets them."""
        losses, self._discriminator_losses = self._discriminator_losses, []
        return float(torch.stack(losses).min()) if losses else None


__all__ = ["DeferredStepChecks", "NonFinite", "StepPlace", "stacked_terms"]
