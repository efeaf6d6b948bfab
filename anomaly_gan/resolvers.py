"""OmegaConf resolvers used by ``conf/`` (registered on import, before Hydra composes).

- ``${ag.join:${grid.categories},${grid.max_items}}`` turns a list into the comma-separated
  form a Hydra sweeper param needs, optionally keeping only the first ``max_items`` (how
  ``debug=smoke`` shrinks any experiment's grid).
- ``${ag.grid_models:${grid.models},${settings}}`` names the model configs of a paper grid
  (``conf/experiment``): ``settings=paper`` runs each architecture's published form
  (``<name>_paper``, and the architectures that only exist in their paper's form, AnoGAN),
  ``settings=ours`` the project's defaults (``<name>``), so one report can set the two side
  by side.
- ``${ag.ddp_start_method:}`` is ``popen`` when SLURM started one task per device (no
  re-launch: Lightning's script re-launch would re-run a Hydra sweep) and ``spawn``
  otherwise, which starts the ranks from inside the running job instead of re-running
  ``sys.argv``.
- ``${ag.width_for_size:32,${data.image_size}}`` is the models' default ``base_width``: 32 at
  64 px, halved for every doubling of the image side (64 at 32 px, 16 at 128 px), never
  below 16. Convolution cost grows with width² × pixels, so a CPU minute buys about the
  same number of epochs at every size; on the magnetic tiles GANomaly at 128 px reached
  0.90 image AUROC with width 16 in 4 minutes and 0.69 with width 32 (5 epochs instead of
  ~20; docs/what-works.md). Set ``model.base_width`` to a number to override. The model
  classes apply the same rule when built without a width (``base_width=None``):
  :func:`default_base_width` (tests/test_config.py holds the two equal).
- ``${ag.accelerator_precision:${trainer.accelerator}}`` is ``trainer=gpu``'s and
  ``trainer=ddp``'s default ``trainer.precision``: ``bf16-mixed`` where the trainer may use a
  CUDA device that computes bfloat16 natively (compute capability 8.0 and later: A100, H100,
  H200, RTX 30xx/40xx), ``32-true`` elsewhere (``trainer.accelerator=cpu``, CPU-only
  machines, older GPUs, where bfloat16 would only be emulated). It resolves where the job
  runs, not where it was submitted: under SLURM on the compute node.
  ``trainer.precision=32-true`` on the command line still wins.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def _join(items: Any, max_items: int | None = None) -> str:
    values = [str(item) for item in items]
    if max_items is not None:
        values = values[: int(max_items)]
    return ",".join(values)


#: The grid settings ``${ag.grid_models:...}`` knows.
GRID_SETTINGS = ("paper", "ours")

#: Architectures that exist only in their paper's form: ``model=anogan`` is AnoGAN as
#: Schlegl et al. (2017) describe it, the papers' comparison column, with no project variant.
PAPER_ONLY_MODELS = ("anogan",)


def grid_models(models: Any, settings: str) -> str:
    """The comma-separated ``model=`` choices of a grid under ``settings`` (paper | ours)."""
    if settings not in GRID_SETTINGS:
        raise ValueError(
            f"settings={settings!r} is not a grid setting: use settings=paper (the papers' "
            f"losses, weights, skips, attention levels, widths and scores, model=<name>_paper) "
            f"or settings=ours (the project's defaults, model=<name>)."
        )
    chosen: list[str] = []
    for name in map(str, models):
        if name in PAPER_ONLY_MODELS:
            if settings == "paper":
                chosen.append(name)
        else:
            chosen.append(f"{name}_paper" if settings == "paper" else name)
    return ",".join(chosen)


def _ddp_start_method() -> str:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return "popen" if SLURMEnvironment.detect() else "spawn"


#: What ``${ag.accelerator_precision:}`` gives with and without native bfloat16.
MIXED_PRECISION = "bf16-mixed"
FULL_PRECISION = "32-true"


def accelerator_precision(accelerator: str = "auto") -> str:
    """``bf16-mixed`` when ``accelerator`` (``trainer.accelerator``) may be a CUDA device with
    native bfloat16, else ``32-true``.

    Emulated bfloat16 (pre-Ampere GPUs) is slower than fp32, so it does not count. Reading the
    device initialises CUDA in this process; the DDP ranks start by spawn or by SLURM, never
    by fork, so that is safe.
    """
    import torch

    if str(accelerator) not in ("auto", "gpu", "cuda") or not torch.cuda.is_available():
        return FULL_PRECISION
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    return MIXED_PRECISION if native else FULL_PRECISION


#: ``base_width`` at 64 px of every ``model=<name>`` config (its
#: ``${ag.width_for_size:32,${data.image_size}}``) and of the classes built without one.
WIDTH_AT_64 = 32


def width_for_size(width_at_64: int, image_size: int, minimum: int = 16) -> int:
    """``width_at_64`` at 64 px, halved for every doubling of ``image_size``, >= ``minimum``."""
    return max(int(minimum), round(int(width_at_64) * 64 / int(image_size)))


def default_base_width(image_size: int) -> int:
    """The project's ``base_width`` at ``image_size`` (64 at 32 px, 32 at 64, 16 from 128)."""
    return width_for_size(WIDTH_AT_64, image_size)


def register_resolvers() -> None:
    for name, function in (
        ("ag.join", _join),
        ("ag.grid_models", grid_models),
        ("ag.ddp_start_method", _ddp_start_method),
        ("ag.width_for_size", width_for_size),
        ("ag.accelerator_precision", accelerator_precision),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


register_resolvers()
