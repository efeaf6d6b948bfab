"""Checkpoints that survive a kill at any moment, and the checkpoint a run resumes from.

Writing: Lightning's own writer serialises into memory, writes a temporary file in the
system temp folder and moves it onto the checkpoint. On a cluster ``/tmp`` is usually
another file system than the run directory, so that move is a copy *into* the checkpoint
file, and a kill during it (pre-emption, the OOM killer, a time limit) leaves a truncated
``last.ckpt``; nothing is fsynced either, so a node crash can leave an empty one.
``AtomicCheckpointIO`` writes a temporary file in the checkpoint's own folder, fsyncs it,
renames it over the checkpoint and fsyncs the folder: a checkpoint is always either the
previous complete file or the new complete file.

Resuming: ``ckpt_path=last`` and ``auto_resume`` take the most trained checkpoint of the
run that loads (``last.ckpt``, the epoch files, Lightning's SLURM ``hpc_ckpt_*.ckpt``),
whatever moment the previous process died at: a kill between the epoch file and
``last.ckpt`` leaves only the epoch file, and a file damaged outside this writer (full
disk, an interrupted copy of the run) is skipped with a warning that names it.

Pre-emption: ``PreemptionCheckpoint`` turns SIGTERM / SIGUSR1 into a stop at the next safe
point of Lightning's loops with a checkpoint, so a requeued job loses no more than a batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

#: Marks this writer's temporary files: ``.<name>.tmp-<pid>-<random>`` beside the checkpoint.
TEMP_MARKER = ".tmp-"
#: Lightning's SLURM auto-requeue checkpoints, written into the run directory.
HPC_PATTERN = "hpc_ckpt_*.ckpt"


class CheckpointWarning(UserWarning):
    """A checkpoint of the run could not be loaded and was passed over."""


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX); a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError):
        handle = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` into a temporary file beside ``path``, fsync, then rename onto ``path``.

    ``path`` itself is never opened for writing, so readers (and a resumed run) see either
    the old complete file or the new one. The temporary file is on the same file system
    (same folder), so the rename is atomic; on any error it is removed again.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"
    # os.open with 0o666 lets the umask decide the permissions, as for a plain open().
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` that writes local checkpoints with ``atomic_torch_save``.

    Remote paths (``s3://`` ...) keep Lightning's writer: object stores replace whole
    objects anyway. ``train.py`` passes it to every Trainer it builds.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, Path(path))


# ---------------------------------------------------------------------------- resuming
@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint that loads, and how far its run had trained."""

    path: Path
    global_step: int
    epoch: int


@dataclass
class ResumePoint:
    """Where training restarts (``path`` None: from scratch) and what was passed over."""

    path: Path | None = None
    global_step: int | None = None
    epoch: int | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)


def read_checkpoint_info(path: Path) -> CheckpointInfo:
    """Open ``path`` as Lightning does (``weights_only``) and read its progress counters.

    ``mmap`` reads the archive's index and the pickled structure but no tensor data, so
    this is cheap even for large checkpoints; a truncated file has lost the index at its
    end and fails here. Raises ``OSError``/``RuntimeError``/``pickle`` errors unchanged.
    """
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ValueError("not a Lightning checkpoint (no state_dict)")
    return CheckpointInfo(path, int(state.get("global_step", 0)), int(state.get("epoch", 0)))


def _unreadable_reason(error: BaseException) -> str:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"{type(error).__name__}: {reason}"


def remove_stale_temporaries(checkpoint_dir: Path) -> list[Path]:
    """Delete what a writer killed mid-write left (``.<name>.tmp-*``); returns them.

    Called before a run (re)starts, when no writer of this run is alive. Only global rank
    0 deletes, so ranks started later never race a write.
    """
    if rank_zero_only.rank != 0 or not checkpoint_dir.is_dir():
        return []
    stale = sorted(checkpoint_dir.glob(f".*{TEMP_MARKER}*"))
    for path in stale:
        path.unlink(missing_ok=True)
        log.info("Removed %s, left by a checkpoint write that was interrupted.", path)
    return stale


def _candidates(checkpoint_dir: Path, run_dir: Path) -> list[Path]:
    found = set(checkpoint_dir.glob("*.ckpt")) if checkpoint_dir.is_dir() else set()
    found |= set(run_dir.glob(HPC_PATTERN)) if run_dir.is_dir() else set()
    return sorted(path for path in found if path.is_file())


def newest_loadable(checkpoint_dir: Path, run_dir: Path) -> ResumePoint:
    """The most trained checkpoint of a run that loads; each one that does not is skipped.

    "Most trained" is read from inside the files (global step, then epoch), not from their
    names or modification times, which a copy of the run directory changes. On a tie
    ``last.ckpt`` wins (it is the one Lightning's own ``ckpt_path=last`` means).
    """
    point = ResumePoint()
    best: CheckpointInfo | None = None
    for path in _candidates(checkpoint_dir, run_dir):
        try:
            info = read_checkpoint_info(path)
        except Exception as error:  # any reason it cannot load: skip it, say which and why
            point.skipped.append({"path": str(path), "error": _unreadable_reason(error)})
            continue
        rank = (info.global_step, info.epoch, path.name == "last.ckpt")
        if best is None or rank > (best.global_step, best.epoch, best.path.name == "last.ckpt"):
            best = info
    for skipped in point.skipped:
        message = (
            f"Checkpoint {skipped['path']} does not load ({skipped['error']}); it is skipped. "
            "It was probably cut short (killed during a write, full disk, interrupted copy); "
            "delete it once the run has resumed."
        )
        warnings.warn(message, CheckpointWarning, stacklevel=2)
        log.warning(message)
    if best is not None:
        point.path, point.global_step, point.epoch = best.path, best.global_step, best.epoch
    return point


def resume_point(
    requested: str | None, auto_resume: bool, checkpoint_dir: Path, run_dir: Path
) -> ResumePoint:
    """Where ``train.py`` restarts training (``ckpt_path`` / ``auto_resume``).

    - ``ckpt_path=<file>``: that file, refused by name when it does not load;
    - ``ckpt_path=last``: the newest checkpoint of this run directory that loads; an
      error when none does;
    - nothing, with ``auto_resume``: the same when there is one (a re-launched sweep job,
      a SLURM requeue), else a fresh start.
    """
    remove_stale_temporaries(checkpoint_dir)
    if requested and requested != "last":
        path = Path(requested)
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={requested}: no such checkpoint file.")
        try:
            info = read_checkpoint_info(path)
        except Exception as error:
            raise ValueError(
                f"ckpt_path={requested} does not load ({_unreadable_reason(error)}); it is "
                "probably truncated. Give another checkpoint, or ckpt_path=last (in that run's "
                "directory) to take its newest checkpoint that loads."
            ) from error
        point = ResumePoint(path, info.global_step, info.epoch)
    elif requested == "last" or auto_resume:
        point = newest_loadable(checkpoint_dir, run_dir)
        if point.path is None and requested == "last":
            tried = "; ".join(f"{s['path']} ({s['error']})" for s in point.skipped)
            found = f"none of its checkpoints loads: {tried}" if tried else "it holds none"
            raise FileNotFoundError(
                f"ckpt_path=last but {checkpoint_dir}: {found}. Re-run in the interrupted "
                "run's directory (hydra.run.dir=<that dir>, or the same hydra.sweep.dir for a "
                "sweep) or give ckpt_path=<file.ckpt>."
            )
        if point.path is None and point.skipped:
            log.warning("No checkpoint of %s loads: training starts from scratch.", run_dir)
    else:
        return ResumePoint()
    if point.path is not None:
        log.info(
            "Resuming from %s (epoch %d, global step %d).",
            point.path,
            point.epoch,
            point.global_step,
        )
    return point


# ---------------------------------------------------------------------------- pre-emption
#: What schedulers send before they stop a job: SIGTERM (scancel, pre-emption, Kubernetes,
#: a time limit's first notice) and SIGUSR1 (SLURM ``--signal=USR1@<s>``, the signal
#: Lightning's SLURMEnvironment expects).
PREEMPTION_SIGNALS = ("SIGTERM", "SIGUSR1")


class PreemptionCheckpoint(Callback):
    """On a pre-emption signal, stop at the next safe point, save ``last.ckpt``, exit.

    Lightning already stops on SIGTERM at its safe points (after the current training
    batch, or between validation batches) by raising ``SIGTERMException``; this callback
    makes the other ``signals`` do the same, saves the weights and loop state then (a
    plain SIGTERM saves nothing in Lightning), and under SLURM runs Lightning's requeue
    handler at that point instead of in the middle of an optimizer step. ``train.py``
    marks ``results.json`` ``interrupted``; the requeued or re-launched job resumes from
    the newest checkpoint that loads (``auto_resume``) and ends on the same step count.
    """

    def __init__(self, signals: Sequence[str] = PREEMPTION_SIGNALS) -> None:
        unknown = [
            name for name in signals if not isinstance(getattr(signal, str(name), None), int)
        ]
        if unknown:
            raise ValueError(
                f"callbacks.preemption.signals: unknown signal names {unknown}; use names such "
                "as SIGTERM, SIGUSR1, SIGUSR2."
            )
        self.signals = [signal.Signals[str(name)] for name in signals]
        self.received: signal.Signals | None = None
        self.saved: Path | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Take the signals over (after Lightning installed its handlers, which are kept)."""
        if threading.current_thread() is not threading.main_thread():
            return  # Python only delivers signals to the main thread
        for number in self.signals:
            self._previous[number] = signal.getsignal(number)
            signal.signal(number, self._handler(trainer))

    def _handler(self, trainer: L.Trainer) -> Callable[[int, FrameType | None], None]:
        def handle(number: int, frame: FrameType | None) -> None:
            self.received = self.received or signal.Signals(number)
            log.warning(
                "Received %s: stopping after the current batch and saving a checkpoint.",
                signal.Signals(number).name,
            )
            previous = self._previous.get(signal.Signals(number))
            if number == signal.SIGTERM and callable(previous):
                previous(number, frame)  # Lightning's: flags the stop, ends DDP children
            # Lightning's loops stop at their safe points when this flag is set.
            trainer._signal_connector.received_sigterm = True

        return handle

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        callback = trainer.checkpoint_callback
        folder = Path(
            getattr(callback, "dirpath", None) or Path(trainer.default_root_dir) / "checkpoints"
        )
        path = folder / "last.ckpt"
        trainer.save_checkpoint(path, weights_only=False)
        self.saved = path
        log.warning(
            "Saved %s (epoch %d, global step %d) on %s; the next run in this directory resumes "
            "from it.",
            path,
            trainer.current_epoch,
            trainer.global_step,
            self.received.name if self.received else "SIGTERM",
        )
        previous = self._previous.get(self.received) if self.received else None
        if self.received != signal.SIGTERM and callable(previous):
            previous(int(self.received), None)  # under SLURM: Lightning's requeue

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if threading.current_thread() is threading.main_thread():
            for number, previous in self._previous.items():
                if previous is not None:
                    signal.signal(number, previous)
        self._previous.clear()
