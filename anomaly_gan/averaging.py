"""An exponential moving average of the generator's weights, validated, tested and saved.

GAN iterates oscillate: the generator after step *t* is one point of a noisy trajectory, and
which point the validation happens to see decides the checkpoint. Averaging the generator's
weights over recent steps is the standard remedy (Karras, Aila, Laine, Lehtinen,
"Progressive Growing of GANs for Improved Quality, Stability, and Variation", ICLR 2018,
Sec. 5; Yazıcı, Foo, Winkler, Yap, Piliouras, Chandrasekhar, "The Unusual Effectiveness of
Averaging in GAN Training", ICLR 2019, Sec. 3). Only the generator is averaged: the
discriminator is a training device, and the scorer's buffers (threshold, per-pixel
statistics) are computed at each validation for the weights validated, so averaging them
would mix calibrations (Lightning's ``WeightAveraging`` averages every buffer of the module,
which is why this callback exists).

What a run does with it (``callbacks=ema``):

- after every training batch (one generator update) the average moves towards the current
  weights with ``min(decay, (1 + n) / (10 + n))`` after *n* updates, so a short run is not
  dominated by the initial weights;
- every validation runs on the averaged generator (its reconstruction error chooses the
  checkpoint, its maps calibrate the scorer);
- every checkpoint holds the averaged generator under ``state_dict`` (what test, predict.py
  and ONNX export load) and the current training weights in this callback's state, so a
  resumed run continues training from where it stopped;
- after training the module keeps the averaged generator.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

GENERATOR_PREFIX = "generator."


def _generator_state(module: L.LightningModule) -> dict[str, Tensor]:
    """The generator's parameters and buffers, by name (live tensors, not copies)."""
    generator = getattr(module, "generator", None)
    if generator is None:
        raise ValueError(
            f"callbacks=ema averages the generator's weights, but {type(module).__name__} "
            "has no `generator` attribute; remove the ema callback for this model"
        )
    return dict(generator.state_dict(keep_vars=True))


class GeneratorEma(Callback):
    """Keep, validate, test and save an exponential moving average of ``module.generator``.

    Args:
        decay: weight of the old average per update (0 ≤ decay < 1); the effective horizon
            is about ``1 / (1 - decay)`` generator updates (0.99: the last ~100).
    """

    def __init__(self, decay: float = 0.99) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(
                f"callbacks.generator_ema.decay must be in [0, 1), got {decay!r}: it is the "
                "weight of the old average per generator update (0.99 averages ~100 updates)"
            )
        self.decay = decay
        self.updates = 0
        self._average: dict[str, Tensor] | None = None
        self._module: L.LightningModule | None = None
        self._swapped = False  # True while the module's generator holds the average
        self._restored_current: dict[str, Tensor] | None = None

    # ------------------------------------------------------------------------ training
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._module = pl_module
        live = _generator_state(pl_module)
        # Both start from what the module holds: fresh weights, or on resume the
        # checkpoint's state_dict, which is the average; the training weights come back
        # from this callback's own state.
        self._average = {name: value.detach().clone() for name, value in live.items()}
        if self._restored_current is not None:
            with torch.no_grad():
                for name, value in live.items():
                    value.copy_(self._restored_current[name].to(value.device))
            self._restored_current = None
        self._swapped = False

    def current_decay(self) -> float:
        """The decay of the next update: lower early on, so the start does not dominate."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, pl_module: L.LightningModule) -> None:
        """Move the average one update towards the generator's current weights."""
        assert self._average is not None
        decay = self.current_decay()
        for name, value in _generator_state(pl_module).items():
            average = self._average[name]
            if average.is_floating_point():
                average.lerp_(value.detach(), 1.0 - decay)
            else:  # counters such as BatchNorm's num_batches_tracked
                average.copy_(value.detach())
        self.updates += 1

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.update(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._average is not None and not self._swapped:
            self._swap(pl_module)
        self._average = None  # the module holds the average from now on
        self._swapped = False

    # ---------------------------------------------------------------------- validation
    def _swap(self, pl_module: L.LightningModule) -> None:
        assert self._average is not None
        with torch.no_grad():
            for name, value in _generator_state(pl_module).items():
                average = self._average[name]
                held = value.detach().clone()
                value.copy_(average)
                average.copy_(held)
        self._swapped = not self._swapped

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._average is not None and not self._swapped:
            self._swap(pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._average is not None and self._swapped:
            self._swap(pl_module)

    # --------------------------------------------------------------------- checkpoints
    def _averaged_and_current(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        assert self._average is not None and self._module is not None
        live = {n: v.detach() for n, v in _generator_state(self._module).items()}
        return (live, self._average) if self._swapped else (self._average, live)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._average is None:  # after training: the module already holds the average
            return
        averaged, _ = self._averaged_and_current()
        state = checkpoint["state_dict"]
        for name, value in averaged.items():
            state[GENERATOR_PREFIX + name] = value.detach().clone()

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"decay": self.decay, "updates": self.updates}
        if self._average is not None and self._module is not None:
            _, current = self._averaged_and_current()
            state["current_generator"] = {n: v.detach().cpu().clone() for n, v in current.items()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.updates = int(state_dict.get("updates", 0))
        self._restored_current = state_dict.get("current_generator")
