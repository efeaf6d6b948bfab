"""Our GANomaly side by side with anomalib's, same size, batch and device, in one process.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python bench/anomalib_compare.py [--sizes 64 128]
    .venv/bin/python bench/anomalib_compare.py --profile        # + torch.profiler tables

anomalib is not a dependency of this project: the first run creates a separate venv,
``bench/.venv-anomalib`` (git-ignored by a ``.gitignore`` inside it), installs the pinned
``anomalib==2.7.0`` into it (pip's machine-wide constraints keep torch at the release this
project uses), and re-runs this script there with ``PYTHONPATH`` set to this repository, so
both implementations run in the same interpreter, on the same torch and threads.

Both networks are the reference GANomaly (latent 100, width 64, no extra layers, final
conv), 3 channels, Adam 2e-4 (0.5, 0.999), random images in [-1, 1]. Three comparisons,
interleaved (ours, theirs, ours, theirs, ...) so a change of machine load hits both:

- ``step`` (the headline): each library's training-step logic on its own networks, without
  Lightning around it. Ours = :meth:`GanAnomalyModule.training_step` re-stated op for op
  (:func:`our_step`: one generator pass; D step on real + detached fake with G frozen; G
  step with a no-grad D pass on the real image for the feature-matching target and a D pass
  on the fake with D frozen; finite-loss check; D re-init check). Theirs = anomalib's
  ``Ganomaly.training_step`` op for op (:func:`their_step`: G pass; D on real and fake; G
  backward with ``retain_graph``; G step; D on the detached fake; D backward reusing the
  real pass; D step; ``.item()`` of both losses for logging).
- ``lightning``: both real LightningModules through ``lightning.Trainer.fit`` (ours with its
  logging; theirs with its pre-processor, Resize + ImageNet Normalize, as anomalib runs it).
- ``inference``: ``model(image)`` in eval mode under ``torch.inference_mode``; both score by
  the latent distance.

Ratios are ours / theirs in seconds per step (below 1: ours is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

ANOMALIB = "anomalib==2.7.0"
VENV = common.REPO / "bench" / ".venv-anomalib"
INSTALL_TIMEOUT_S = 15 * 60


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


# ------------------------------------------------------------------------ the steps
@contextlib.contextmanager
def frozen(module: Any) -> Iterator[None]:
    """What Lightning's ``toggle_optimizer`` does for the other network: no weight grads."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def our_step(model: Any, d_opt: Any, g_opt: Any, image: Any) -> None:
    """``GanAnomalyModule.training_step`` without Lightning (logging aside, op for op)."""
    import torch

    from anomaly_gan.losses import discriminator_loss

    output = model.generate(image)
    fake = output.reconstruction
    with frozen(model.generator):
        real_logits, _ = model.discriminator(image)
        fake_logits, _ = model.discriminator(fake.detach())
        d_loss = discriminator_loss(real_logits, fake_logits)
        model._ensure_finite({"d": d_loss}, 0)
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
    with frozen(model.discriminator):
        with torch.no_grad():
            _, real_features = model.discriminator(image)
        fake_logits, fake_features = model.discriminator(fake)
        latent_in, latent_out = model.latent_pair(image, output, real_features, fake_features)
        terms = model.loss_fn.terms(
            image, fake, fake_logits, real_features, fake_features, latent_in, latent_out
        )
        g_loss = model.loss_fn.total(terms)
        model._ensure_finite({**terms, "g": g_loss}, 0)
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        g_opt.step()
    d_loss.item()  # the D re-initialisation check


def their_step(model: Any, losses: tuple[Any, Any], d_opt: Any, g_opt: Any, image: Any) -> None:
    """anomalib 2.7.0 ``Ganomaly.training_step`` without Lightning (op for op)."""
    generator_loss, discriminator_loss = losses
    padded, fake, latent_i, latent_o = model(image)
    pred_real, _ = model.discriminator(padded)
    pred_fake, _ = model.discriminator(fake)
    g_loss = generator_loss(latent_i, latent_o, padded, fake, pred_real, pred_fake)
    g_opt.zero_grad()
    g_loss.backward(retain_graph=True)
    g_opt.step()
    pred_fake, _ = model.discriminator(fake.detach())
    d_loss = discriminator_loss(pred_real, pred_fake)
    d_opt.zero_grad()
    d_loss.backward()
    d_opt.step()
    g_loss.item(), d_loss.item()  # their log_dict


# ------------------------------------------------------------------------- builders
def build_ours(size: int) -> Any:
    from anomaly_gan.models import Ganomaly

    return Ganomaly(image_size=size, channels=3, latent_dim=100, base_width=64)


def build_theirs(size: int) -> Any:
    from anomalib.models.image.ganomaly.torch_model import GanomalyModel

    return GanomalyModel(
        input_size=(size, size),
        num_input_channels=3,
        n_features=64,
        latent_vec_size=100,
        extra_layers=0,
        add_final_conv_layer=True,
    )


def adam_pair(discriminator: Any, generator: Any) -> tuple[Any, Any]:
    import torch

    def adam(params: Any) -> Any:
        return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))

    return adam(discriminator.parameters()), adam(generator.parameters())


def _time(fn: Callable[[], None], warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def _lightning_seconds(module: Any, loader: Any, warmup: int) -> list[float]:
    import lightning as L

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._start = 0.0

        def on_train_batch_start(self, *_: Any) -> None:
            self._start = time.perf_counter()

        def on_train_batch_end(self, *_: Any) -> None:
            self.seconds.append(time.perf_counter() - self._start)

    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        gradient_clip_val=None,
        callbacks=[timer],
    )
    trainer.fit(module, train_dataloaders=loader)
    return timer.seconds[warmup:]


def compare_lightning(
    size: int, batch: int, warmup: int, steps: int
) -> tuple[list[float], list[float]]:
    """Both real LightningModules through ``Trainer.fit`` (ours first, then theirs)."""
    import torch
    from anomalib.data import ImageBatch
    from anomalib.models import Ganomaly as TheirGanomaly
    from torch.utils.data import DataLoader

    n = (warmup + steps) * batch
    images = torch.rand(n, 3, size, size) * 2 - 1
    ours_loader = DataLoader([{"image": image} for image in images], batch_size=batch)
    their_loader = DataLoader(
        list(images),
        batch_size=batch,
        collate_fn=lambda items: ImageBatch(
            image=torch.stack(items), gt_label=torch.zeros(len(items), dtype=torch.long)
        ),
    )
    theirs = TheirGanomaly(
        batch_size=batch,
        pre_processor=TheirGanomaly.configure_pre_processor((size, size)),
        post_processor=False,
        evaluator=False,
        visualizer=False,
    )
    return (
        _lightning_seconds(build_ours(size), ours_loader, warmup),
        _lightning_seconds(theirs, their_loader, warmup),
    )


def profile_steps(size: int, batch: int) -> str:
    """torch.profiler tables (self CPU time) of one training step of each implementation."""
    import torch
    from anomalib.models.image.ganomaly.loss import DiscriminatorLoss, GeneratorLoss
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    image = torch.rand(batch, 3, size, size) * 2 - 1
    ours = build_ours(size).train()
    theirs = build_theirs(size).train()
    o_opts = adam_pair(ours.discriminator, ours.generator)
    t_opts = adam_pair(theirs.discriminator, theirs.generator)
    losses = (GeneratorLoss(1, 50, 1), DiscriminatorLoss())
    runs = {
        "ours": lambda: our_step(ours, *o_opts, image),
        "theirs": lambda: their_step(theirs, losses, *t_opts, image),
    }
    out = []
    for name, fn in runs.items():
        fn()  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        out.append(f"--- {name} ({size} px, batch {batch}) ---")
        out.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return "\n".join(out)


def _interleaved(
    first: Callable[[], None], second: Callable[[], None], warmup: int, steps: int
) -> tuple[list[float], list[float]]:
    """Warm both up, then time first, second, first, second, ... (load hits both alike)."""
    _time(first, warmup, 0)
    _time(second, warmup, 0)
    a: list[float] = []
    b: list[float] = []
    for _ in range(steps):
        a += _time(first, 0, 1)
        b += _time(second, 0, 1)
    return a, b


def compare_size(size: int, batch: int, warmup: int, steps: int) -> dict[str, float]:
    """Training step and inference of both, interleaved, on the same random batch."""
    import torch
    from anomalib.models.image.ganomaly.loss import DiscriminatorLoss, GeneratorLoss

    torch.manual_seed(0)
    image = torch.rand(batch, 3, size, size) * 2 - 1
    ours, theirs = build_ours(size).train(), build_theirs(size).train()
    o_opts = adam_pair(ours.discriminator, ours.generator)
    t_opts = adam_pair(theirs.discriminator, theirs.generator)
    losses = (GeneratorLoss(1, 50, 1), DiscriminatorLoss())
    ours_s, theirs_s = _interleaved(
        lambda: our_step(ours, *o_opts, image),
        lambda: their_step(theirs, losses, *t_opts, image),
        warmup,
        steps,
    )
    ours.eval()
    theirs.eval()
    with torch.inference_mode():
        ours_i, theirs_i = _interleaved(lambda: ours(image), lambda: theirs(image), 1, steps)
    return {
        "step_ours_s": statistics.median(ours_s),
        "step_theirs_s": statistics.median(theirs_s),
        "infer_ours_s": statistics.median(ours_i),
        "infer_theirs_s": statistics.median(theirs_i),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import anomalib
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    info = common.machine("cpu")
    info["anomalib"] = anomalib.__version__
    print(common.machine_line(info) + f" anomalib {anomalib.__version__}.", flush=True)
    rounds: list[dict[str, Any]] = []
    for round_index in range(args.rounds):
        for size in args.sizes:
            row: dict[str, Any] = {"round": round_index + 1, "size": size, "batch": args.batch}
            row.update(compare_size(size, args.batch, args.warmup, args.steps))
            if args.lightning:
                lo, lt = compare_lightning(size, args.batch, 1, args.steps)
                row["lightning_ours_s"] = statistics.median(lo)
                row["lightning_theirs_s"] = statistics.median(lt)
            for key in ("step", "infer", "lightning"):
                if f"{key}_ours_s" in row:
                    row[f"{key}_ratio"] = row[f"{key}_ours_s"] / row[f"{key}_theirs_s"]
            rounds.append(row)
            print(
                "  "
                + ", ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                ),
                flush=True,
            )
    data = {"machine": info, "options": {k: v for k, v in vars(args).items()}, "rounds": rounds}
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
        "train step ours / theirs (s)",
        "ratio",
        "Trainer.fit step ours / theirs (s)",
        "ratio",
        "inference ours / theirs (s)",
        "ratio",
    ]
    rows = []
    for run_index, data in enumerate(runs, start=1):
        for r in data["rounds"]:
            lightning = (
                (
                    f"{r['lightning_ours_s']:.3f} / {r['lightning_theirs_s']:.3f}",
                    f"**{r['lightning_ratio']:.2f}**",
                )
                if "lightning_ratio" in r
                else ("-", "-")
            )
            rows.append(
                [
                    str(run_index),
                    str(r["round"]),
                    str(r["size"]),
                    str(r["batch"]),
                    f"{r['step_ours_s']:.3f} / {r['step_theirs_s']:.3f}",
                    f"**{r['step_ratio']:.2f}**",
                    *lightning,
                    f"{r['infer_ours_s']:.3f} / {r['infer_theirs_s']:.3f}",
                    f"**{r['infer_ratio']:.2f}**",
                ]
            )
    machines = "\n".join(
        f"Run {i}: {common.machine_line(d['machine'])} anomalib {d['machine']['anomalib']}."
        for i, d in enumerate(runs, start=1)
    )
    steps = runs[-1]["options"]["steps"]
    return "\n".join(
        [
            machines,
            "",
            f"CPU, batch {runs[-1]['options']['batch']}, median of {steps} interleaved steps per "
            "cell after warm-up; ratio = ours / theirs (seconds per step; below 1 = ours faster). "
            "'train step': each library's training-step logic on its own networks without "
            "Lightning (see `bench/anomalib_compare.py`); 'Trainer.fit step': both real "
            "LightningModules through `lightning.Trainer`; inference: `model(image)` in eval mode.",
            "",
            common.table(header, rows),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each first")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="repeat the whole comparison")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--no-lightning",
        dest="lightning",
        action="store_false",
        help="skip the Trainer.fit comparison",
    )
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
    path = common.write_json("anomalib_compare", {"runs": runs})
    body = markdown(runs)
    common.update_section("anomalib_compare", "Side by side with anomalib's GANomaly", body)
    print()
    print(body)
    print(f"\n{path}, {common.BENCHMARKS_MD}")


if __name__ == "__main__":
    main()
