"""Faults at exact moments, injected into a real ``python train.py`` through its config.

A test adds one as a callback, e.g. ``+callbacks.fault._target_=tests.faults.KillDuringSave
+callbacks.fault.save=2``; ``train.py`` instantiates every ``callbacks.*`` entry. The
process then dies at the same point of training on every machine, however fast it is.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class _KillWhenPickled:
    """Pickling this object (what ``torch.save`` does while writing) kills the process."""

    def __reduce__(self) -> Any:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable: SIGKILL cannot be caught")


class KillDuringSave(Callback):
    """SIGKILL the process in the middle of writing its ``save``-th checkpoint (1-based).

    With ``ModelCheckpoint(save_last=True)`` checkpoint 1 is ``epoch000.ckpt`` and 2 is
    ``last.ckpt`` of the same validation: ``save=2`` is a pre-emption that lands after the
    first epoch file is complete and before ``last.ckpt`` exists.
    """

    def __init__(self, save: int) -> None:
        self.save = save
        self.saves = 0

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.saves += 1
        if self.saves == self.save:
            checkpoint["fault"] = _KillWhenPickled()


class SignalAtStep(Callback):
    """Send ``signal`` (a name: SIGTERM, SIGUSR1) to this process at the end of the training
    batch that brings ``trainer.global_step`` to ``step``: a scheduler's pre-emption notice
    arriving mid-epoch, at the same batch on every machine."""

    def __init__(self, step: int, signal: str = "SIGTERM") -> None:
        self.step = step
        self.signal = signal
        self.sent = False

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self.sent and trainer.global_step >= self.step:
            self.sent = True
            os.kill(os.getpid(), getattr(signal, self.signal))
