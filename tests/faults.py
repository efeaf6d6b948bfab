"""Faults at exact moments, injected into a real ``python train.py`` through its config,
and machines that lack the optional packages.

A test adds one as a callback, e.g. ``+callbacks.fault._target_=tests.faults.KillDuringSave
+callbacks.fault.save=2``; ``train.py`` instantiates every ``callbacks.*`` entry. The
process then dies at the same point of training on every machine, however fast it is.
"""

from __future__ import annotations

import os
import signal
import sysconfig
from collections.abc import Sequence
from pathlib import Path
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

    In a sweep, ``job=${hydra:job.num}`` and ``kill_job=N`` kill only job N: the process
    (and with it the sweep) dies there, as when a node fails.
    """

    def __init__(self, save: int, job: int | None = None, kill_job: int | None = None) -> None:
        self.save = save
        self.saves = 0
        self.armed = kill_job is None or job == kill_job

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.saves += 1
        if self.armed and self.saves == self.save:
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


#: Packages only some commands need (W&B logging, ONNX export and its check, Optuna and
#: submitit sweeps): a command that does not use one must run on a machine without it.
OPTIONAL_PACKAGES = ("wandb", "onnx", "onnxruntime", "optuna", "submitit")


def without_packages(folder: Path, names: Sequence[str]) -> dict[str, str]:
    """Environment for a subprocess that sees this interpreter's packages except ``names``,
    as on a machine where they are not installed.

    ``folder`` gets a copy of site-packages made of links, without those packages and their
    metadata, and a ``sitecustomize`` that puts it in place of the real one: ``import``
    fails, and ``importlib.util.find_spec`` / ``importlib.metadata`` say "absent" (what
    torch and Lightning probe), exactly as without the package.
    """
    site_packages = Path(sysconfig.get_paths()["purelib"])
    overlay = folder / "site-packages"
    overlay.mkdir(parents=True, exist_ok=True)
    for entry in site_packages.iterdir():
        stem = entry.name.split("-")[0] if entry.name.endswith(".dist-info") else entry.name
        if stem.removesuffix(".py") in names:
            continue
        (overlay / entry.name).symlink_to(entry)
    real, copy = str(site_packages), str(overlay)
    (folder / "sitecustomize.py").write_text(
        f"import sys\nsys.path[:] = [{copy!r} if p == {real!r} else p for p in sys.path]\n"
    )
    root = Path(__file__).resolve().parents[1]
    return {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{root}", "HYDRA_FULL_ERROR": "1"}
