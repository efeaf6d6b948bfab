"""Our GANomaly side by side with anomalib's, same size, batch and device, in one process.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python bench/anomalib_compare.py [--sizes 64 128]
    .venv/bin/python bench/anomalib_compare.py --profile        # + torch.profiler tables
    .venv/bin/python bench/anomalib_compare.py --sizes 32 --batch 4 --steps 1 --rounds 1 --no-record

anomalib is not a dependency of this project: the first run creates a separate venv,
``bench/.venv-anomalib`` (git-ignored by a ``.gitignore`` inside it) that also sees this
project's installed packages (a ``.pth`` file), installs the pinned ``anomalib==2.7.0`` and
whatever else it needs into it, and re-runs this script there with ``PYTHONPATH`` set to this
repository: both implementations run in the same interpreter, on the same torch, Lightning
and threads.

Both networks are the reference GANomaly (latent 100, width 64, no extra layers, final
conv), 3 channels, Adam 2e-4 (0.5, 0.999), random images in [-1, 1]; ours is built as
``model=ganomaly_paper`` (read from its config: width 64, feature matching + L1 loss,
latent-distance score), not with the project's defaults. Per round and size:

- training: each library's real LightningModule through ``lightning.Trainer.fit``
  (:func:`_common.fit_timed`), ours then theirs, ``--warmup`` + ``--steps`` batches each.
  Two figures per batch: ``training_step`` (the module's own step: ours is
  ``GanAnomalyModule.training_step``, theirs ``Ganomaly.training_step``, each with its
  optimizer steps and logging) and the whole ``Trainer.fit`` batch (theirs includes its
  pre-processor, Resize + ImageNet Normalize, as anomalib runs it).
- inference: ``model(image)`` in eval mode under ``torch.inference_mode``, interleaved
  (ours, theirs, ours, ...) so a change of machine load hits both; both score by the
  latent distance.

``--rounds`` repeats everything, so the training figures of both alternate as well.
Ratios are ours / theirs in seconds per step (below 1: ours is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

ANOMALIB = "anomalib==2.7.0"
VENV = common.REPO / "bench" / ".venv-anomalib"
INSTALL_TIMEOUT_S = 15 * 60
#: how the training columns were measured (older runs re-stated the steps without Lightning)
STEP_TIMING = "training_step inside Trainer.fit"


# ------------------------------------------------------------------------ environment
def _have_anomalib() -> bool:
    try:
        import anomalib  # noqa: F401
    except ImportError:
        return False
    return True


def ensure_environment() -> None:
    """Re-run in ``bench/.venv-anomalib`` (created and installed on first use)."""
    python = VENV / "bin" / "python"
    if not python.is_file():
        print(
            f"Creating {VENV} and installing {ANOMALIB} (one time, a few minutes) ...", flush=True
        )
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        (VENV / ".gitignore").write_text("*\n")  # the venv never shows in `git status`
        # This project's packages stay visible there: the same torch and Lightning for both.
        site = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        Path(site, "anomaly_gan_project.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        try:
            done = subprocess.run(
                [str(python), "-m", "pip", "install", "--disable-pip-version-check", ANOMALIB],
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            sys.exit(
                f"Installing {ANOMALIB} took over {INSTALL_TIMEOUT_S // 60} minutes; "
                f"stopped. Remove {VENV} and retry, or install it there by hand."
            )
        if done.returncode != 0:
            sys.exit(
                f"pip install {ANOMALIB} into {VENV} failed:\n{done.stdout[-2000:]}"
                f"\n{done.stderr[-3000:]}"
            )
    env = {**os.environ, "PYTHONPATH": str(common.REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
    os.execve(str(python), [str(python), __file__, *sys.argv[1:]], env)


# ------------------------------------------------------------------------- builders
def ours(size: int) -> Any:
    """Our GANomaly LightningModule in the reference setting (``model=ganomaly_paper``)."""
    return common.build_model("ganomaly", size, paper=True)


def theirs(size: int, batch: int) -> Any:
    """anomalib's GANomaly LightningModule, with its pre-processor and nothing after."""
    from anomalib.models import Ganomaly

    return Ganomaly(
        batch_size=batch,
        pre_processor=Ganomaly.configure_pre_processor((size, size)),
        post_processor=False,
        evaluator=False,
        visualizer=False,
    )


def their_network(size: int) -> Any:
    """anomalib's GANomaly torch model alone (for inference)."""
    from anomalib.models.image.ganomaly.torch_model import GanomalyModel

    return GanomalyModel(
        input_size=(size, size),
        num_input_channels=3,
        n_features=64,
        latent_vec_size=100,
        extra_layers=0,
        add_final_conv_layer=True,
    )


def their_loader(size: int, batch: int, batches: int) -> Any:
    """Random images in anomalib's batch type."""
    import torch
    from anomalib.data import ImageBatch
    from torch.utils.data import DataLoader

    return DataLoader(
        list(common.random_images(batch * batches, size)),
        batch_size=batch,
        collate_fn=lambda items: ImageBatch(
            image=torch.stack(items), gt_label=torch.zeros(len(items), dtype=torch.long)
        ),
    )


def _fits(size: int, batch: int, warmup: int, steps: int) -> dict[str, dict[str, list[float]]]:
    """Both LightningModules through ``Trainer.fit`` (ours first, then theirs)."""
    batches = warmup + steps
    return {
        "ours": common.fit_timed(
            ours(size), common.image_loader(size, batch, batches), warmup=warmup
        ),
        "theirs": common.fit_timed(
            theirs(size, batch), their_loader(size, batch, batches), warmup=warmup
        ),
    }


# ------------------------------------------------------------------------ comparisons
def profile_steps(size: int, batch: int) -> str:
    """torch.profiler tables (self CPU time) of one ``training_step`` of each module."""
    from torch.profiler import ProfilerActivity, profile

    modules = {
        "ours": (ours(size), common.image_loader(size, batch, 2)),
        "theirs": (theirs(size, batch), their_loader(size, batch, 2)),
    }
    out = []
    for name, (module, loader) in modules.items():
        prof = profile(activities=[ProfilerActivity.CPU])
        common.fit_timed(
            module,
            loader,
            warmup=1,
            around_step=lambda i, prof=prof: prof if i == 1 else contextlib.nullcontext(),
        )
        out.append(f"--- {name} ({size} px, batch {batch}) ---")
        out.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return "\n".join(out)


def _interleaved(
    first: Callable[[], Any], second: Callable[[], Any], warmup: int, steps: int
) -> tuple[list[float], list[float]]:
    """Warm both up, then time first, second, first, second, ... (load hits both alike)."""
    common.timed_calls(first, warmup, 0)
    common.timed_calls(second, warmup, 0)
    a: list[float] = []
    b: list[float] = []
    for _ in range(steps):
        a += common.timed_calls(first, 0, 1)
        b += common.timed_calls(second, 0, 1)
    return a, b


def compare_size(size: int, batch: int, warmup: int, steps: int) -> dict[str, float]:
    """Training through both LightningModules, then interleaved inference, same batch."""
    import torch

    fits = _fits(size, batch, warmup, steps)
    torch.manual_seed(0)
    image = common.random_images(batch, size)
    our_model, their_model = ours(size).eval(), their_network(size).eval()
    with torch.inference_mode():
        ours_i, theirs_i = _interleaved(
            lambda: our_model(image), lambda: their_model(image), 1, steps
        )
    return {
        "step_ours_s": statistics.median(fits["ours"]["step_s"]),
        "step_theirs_s": statistics.median(fits["theirs"]["step_s"]),
        "lightning_ours_s": statistics.median(fits["ours"]["batch_s"]),
        "lightning_theirs_s": statistics.median(fits["theirs"]["batch_s"]),
        "infer_ours_s": statistics.median(ours_i),
        "infer_theirs_s": statistics.median(theirs_i),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import anomalib

    common.set_threads(args.threads)
    info = common.machine("cpu")
    info["anomalib"] = anomalib.__version__
    print(common.machine_line(info) + f" anomalib {anomalib.__version__}.", flush=True)
    rounds: list[dict[str, Any]] = []
    for round_index in range(args.rounds):
        for size in args.sizes:
            row: dict[str, Any] = {"round": round_index + 1, "size": size, "batch": args.batch}
            row.update(compare_size(size, args.batch, args.warmup, args.steps))
            for key in ("step", "infer", "lightning"):
                row[f"{key}_ratio"] = row[f"{key}_ours_s"] / row[f"{key}_theirs_s"]
            rounds.append(row)
            print(
                "  "
                + ", ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                ),
                flush=True,
            )
    options = {k: v for k, v in vars(args).items() if k != "record"}
    data = {"machine": info, "options": options | {"step_timing": STEP_TIMING}, "rounds": rounds}
    if args.profile:
        data["profile"] = profile_steps(args.sizes[0], args.batch)
        print(data["profile"])
    return data


def markdown(runs: list[dict[str, Any]]) -> str:
    header = [
        "run",
        "round",
        "px",
        "batch",
        "training_step ours / theirs (s)",
        "ratio",
        "Trainer.fit batch ours / theirs (s)",
        "ratio",
        "inference ours / theirs (s)",
        "ratio",
    ]

    def pair(r: dict[str, Any], key: str) -> list[str]:
        if f"{key}_ratio" not in r:
            return ["-", "-"]
        return [
            f"{r[f'{key}_ours_s']:.3f} / {r[f'{key}_theirs_s']:.3f}",
            f"**{r[f'{key}_ratio']:.2f}**",
        ]

    rows = [
        [
            str(index),
            str(r["round"]),
            str(r["size"]),
            str(r["batch"]),
            *pair(r, "step"),
            *pair(r, "lightning"),
            *pair(r, "infer"),
        ]
        for index, data in enumerate(runs, start=1)
        for r in data["rounds"]
    ]
    machines = []
    for index, data in enumerate(runs, start=1):
        timing = data["options"].get("step_timing") or (
            "train step re-stated op for op without Lightning"
        )
        machines.append(
            f"Run {index}: {common.machine_line(data['machine'])} anomalib "
            f"{data['machine']['anomalib']}; training columns: {timing}."
        )
    steps = runs[-1]["options"]["steps"]
    return "\n".join(
        [
            *machines,
            "",
            f"CPU, batch {runs[-1]['options']['batch']}, median of {steps} steps per cell after "
            "warm-up; ratio = ours / theirs (seconds per step; below 1 = ours faster). "
            "'training_step': each library's training step, measured as each run's line says "
            f"(now: {STEP_TIMING}); 'Trainer.fit batch': the whole batch as the loop runs it; "
            "inference: `model(image)` in eval mode, interleaved "
            "(see `bench/anomalib_compare.py`).",
            "",
            common.table(header, rows),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    common.add_timing_arguments(parser, batch=32, warmup=1, steps=5)
    parser.add_argument("--rounds", type=int, default=2, help="repeat the whole comparison")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--keep-runs",
        type=int,
        default=2,
        help="runs kept in the JSON and table (this one and earlier ones)",
    )
    args = parser.parse_args()
    if not _have_anomalib():
        ensure_environment()  # does not return
    data = run(args)
    previous = (common.read_json("anomalib_compare") or {}).get("runs", [])
    runs = [*previous, data][-args.keep_runs :]
    body = markdown(runs)
    title = "Side by side with anomalib's GANomaly"
    common.publish("anomalib_compare", title, {"runs": runs}, body, args.record)


if __name__ == "__main__":
    main()
