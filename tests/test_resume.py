"""Runs that survive: checkpoints written atomically, resume from the newest checkpoint that
loads whatever moment the previous process died at."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.utilities.exceptions import SIGTERMException

from anomaly_gan.checkpointing import (
    AtomicCheckpointIO,
    CheckpointWarning,
    PreemptionCheckpoint,
    atomic_torch_save,
    resume_point,
)
from tests.conftest import run_train
from tests.faults import SignalAtStep

# The smallest real train.py run: 2 epochs x 2 batches, a narrow GANomaly, 8 test images.
TINY = [
    "debug=fast",
    "logger=none",
    "reference=false",
    "callbacks.progress_bar.refresh_rate=0",
    "model.base_width=8",
    "model.latent_dim=16",
    "+model.validation_defects=false",
    "data.test_limit=8",
    "data.batch_size=4",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
]
TINY_STEPS = 2 * 2 * 2  # epochs x batches x two optimizers


def _results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "results.json").read_text())


# ---------------------------------------------------------------------------- writing
_WRITES: list[tuple[str, str]] | None = None  # set while a test records file events


def _record(event: str, args: tuple[Any, ...]) -> None:
    if _WRITES is None:
        return
    if event == "open" and isinstance(args[0], str | bytes | Path):
        mode, flags = args[1], args[2]
        writing = ("w" in mode or "a" in mode or "+" in mode) if isinstance(mode, str) else None
        if writing is None:
            writing = bool(flags & 0o3)  # O_WRONLY | O_RDWR
        if writing:
            _WRITES.append(("write", str(Path(str(args[0])).absolute())))
    elif event == "os.rename":
        _WRITES.append(("rename", f"{args[0]} -> {args[1]}"))


sys.addaudithook(_record)  # audit hooks cannot be removed; it records only inside _recording


@pytest.fixture
def _recording() -> Iterator[list[tuple[str, str]]]:
    global _WRITES
    _WRITES = []
    try:
        yield _WRITES
    finally:
        _WRITES = None


def _state(global_step: int, epoch: int) -> dict[str, Any]:
    return {"state_dict": {"w": torch.arange(4.0)}, "global_step": global_step, "epoch": epoch}


def test_a_checkpoint_is_replaced_whole_never_written_in_place(
    tmp_path: Path, _recording: list[tuple[str, str]]
) -> None:
    """The checkpoint path is never opened for writing: the new content goes into a
    temporary file in the same folder (same file system, so the rename is atomic) and is
    renamed over it. Lightning's own writer writes its temporary file into the system
    temp folder and moves it, which across file systems is a copy into the checkpoint
    (this test fails with ``TorchCheckpointIO`` in place of ``AtomicCheckpointIO``)."""
    folder = tmp_path / "checkpoints"
    path = folder / "last.ckpt"
    atomic_torch_save(_state(4, 0), path)
    _recording.clear()

    AtomicCheckpointIO().save_checkpoint(_state(8, 1), path)

    written = [target for kind, target in _recording if kind == "write"]
    assert written, "nothing recorded: the audit hook did not see the write"
    assert all(Path(target).parent == folder for target in written), written
    assert str(path) not in written
    renames = [target for kind, target in _recording if kind == "rename"]
    assert renames and renames[-1].endswith(f"-> {path}")
    assert torch.load(path, weights_only=True)["global_step"] == 8
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]  # no temporary left

    # A save that fails half-way leaves the previous checkpoint whole, and no debris.
    with pytest.raises(Exception, match="pickle"):
        AtomicCheckpointIO().save_checkpoint({**_state(12, 2), "bad": lambda: None}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 8
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]


# ---------------------------------------------------------------------------- choosing
def _run_with_checkpoints(tmp_path: Path) -> tuple[Path, Path]:
    """A run directory whose last.ckpt was cut short, beside two complete epoch files and
    a temporary file left by a killed writer."""
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    atomic_torch_save(_state(4, 0), checkpoints / "epoch000.ckpt")
    atomic_torch_save(_state(8, 1), checkpoints / "epoch001.ckpt")
    atomic_torch_save(_state(12, 2), checkpoints / "last.ckpt")
    data = (checkpoints / "last.ckpt").read_bytes()
    (checkpoints / "last.ckpt").write_bytes(data[: len(data) // 2])  # killed mid-copy
    (checkpoints / ".last.ckpt.tmp-1234-abcd").write_bytes(data[:100])
    return run_dir, checkpoints


def test_resume_takes_the_newest_checkpoint_that_loads(tmp_path: Path) -> None:
    run_dir, checkpoints = _run_with_checkpoints(tmp_path)
    for requested in ("last", None):  # ckpt_path=last, and auto_resume
        with pytest.warns(CheckpointWarning, match=r"last\.ckpt does not load"):
            point = resume_point(requested, True, checkpoints, run_dir)
        assert point.path == checkpoints / "epoch001.ckpt"
        assert (point.global_step, point.epoch) == (8, 1)
        assert [s["path"] for s in point.skipped] == [str(checkpoints / "last.ckpt")]
    assert not list(checkpoints.glob(".*")), "the killed writer's temporary file stays"

    # The most trained one wins, whatever the names say: a complete last.ckpt of step 12.
    atomic_torch_save(_state(12, 2), checkpoints / "last.ckpt")
    assert resume_point("last", False, checkpoints, run_dir).path == checkpoints / "last.ckpt"

    # Nothing asked for, nothing resumed.
    assert resume_point(None, False, checkpoints, run_dir).path is None


def test_resume_refuses_by_name_what_it_cannot_use(tmp_path: Path) -> None:
    run_dir, checkpoints = _run_with_checkpoints(tmp_path)
    truncated = checkpoints / "last.ckpt"
    with pytest.raises(ValueError, match=rf"ckpt_path={truncated} does not load.*ckpt_path=last"):
        resume_point(str(truncated), True, checkpoints, run_dir)
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        resume_point(str(checkpoints / "nothing.ckpt"), True, checkpoints, run_dir)

    for name in ("epoch000.ckpt", "epoch001.ckpt"):
        (checkpoints / name).write_bytes(b"")
    with (
        pytest.warns(CheckpointWarning),
        pytest.raises(FileNotFoundError, match=r"none of its checkpoints loads: .*epoch000\.ckpt"),
    ):
        resume_point("last", True, checkpoints, run_dir)
    # auto_resume (a re-launched job) starts afresh rather than failing on unusable files.
    with pytest.warns(CheckpointWarning):
        assert resume_point(None, True, checkpoints, run_dir).path is None
    with pytest.raises(FileNotFoundError, match="it holds none"):
        resume_point("last", True, tmp_path / "empty", tmp_path)


def test_run_killed_while_writing_last_ckpt_resumes_from_the_epoch_file(
    tmp_path: Path, cache_dir: Path
) -> None:
    """Killed (SIGKILL) in the middle of writing ``last.ckpt`` of epoch 0, after the complete
    ``epoch000.ckpt``: ``ckpt_path=last`` resumes from the epoch file, says so, and ends on
    the step count of an uninterrupted run."""
    run_dir = tmp_path / "run"
    args = [*TINY, f"paths.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}"]
    killed = run_train(
        *args, "+callbacks.fault._target_=tests.faults.KillDuringSave", "+callbacks.fault.save=2"
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "epoch000.ckpt").is_file() and not (checkpoints / "last.ckpt").exists()
    assert list(checkpoints.glob(".last.ckpt.tmp-*")), "the write was not in progress"
    assert _results(run_dir)["status"] == "running"

    resumed = run_train(*args, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = _results(run_dir)
    assert results["status"] == "completed"
    assert results["resumed_from"] == str(checkpoints / "epoch000.ckpt")
    assert f"Resuming from {checkpoints / 'epoch000.ckpt'} (epoch 0" in resumed.stdout
    assert results["global_step"] == TINY_STEPS
    assert not list(checkpoints.glob(".*"))


def test_sigterm_saves_marks_interrupted_and_the_rerun_ends_on_the_same_step_count(
    tmp_path: Path, cache_dir: Path
) -> None:
    """SIGTERM mid-epoch (sent by the process itself at a fixed step, so the moment is the
    same on every machine): the run stops after the current batch with a checkpoint, exits
    143 and says ``interrupted``; the re-run resumes from that checkpoint and completes on
    the step count of an uninterrupted run (3 epochs x 3 batches x 2 optimizers)."""
    run_dir = tmp_path / "run"
    args = [
        *TINY,
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=3",
        f"paths.cache_dir={cache_dir}",
        f"hydra.run.dir={run_dir}",
    ]
    last = run_dir / "checkpoints" / "last.ckpt"
    stopped = run_train(
        *args,
        "+callbacks.fault._target_=tests.faults.SignalAtStep",
        "+callbacks.fault.step=8",
        "+callbacks.fault.signal=SIGTERM",
    )
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    results = _results(run_dir)
    assert results["status"] == "interrupted" and results["interrupted_by"] == "SIGTERM"
    assert results["global_step"] == 8 and results["checkpoint_on_interrupt"] == str(last)
    assert torch.load(last, weights_only=True)["global_step"] == 8

    resumed = run_train(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = _results(run_dir)
    assert results["status"] == "completed" and results["resumed_from"] == str(last)
    assert results["global_step"] == 3 * 3 * 2


def test_sigusr1_stops_after_the_batch_with_a_checkpoint(tmp_path: Path) -> None:
    """Outside SLURM, SIGUSR1 would kill the process outright (no handler); with the
    callback it stops Lightning's loop at the same safe point as SIGTERM and saves."""
    preemption = PreemptionCheckpoint()
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=1,
        callbacks=[preemption, SignalAtStep(step=3, signal="SIGUSR1")],
        plugins=[AtomicCheckpointIO()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    before = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(SIGTERMException):
        trainer.fit(BoringModel())
    assert preemption.received == signal.SIGUSR1 and trainer.global_step == 3
    assert preemption.saved == tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(preemption.saved, weights_only=True)["global_step"] == 3
    assert signal.getsignal(signal.SIGUSR1) == before  # handlers handed back
