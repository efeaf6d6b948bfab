"""OmegaConf resolvers used by ``conf/`` (registered on import, before Hydra composes).

- ``${ag.join:${grid.categories},${grid.max_items}}`` turns a list into the comma-separated
  form a Hydra sweeper param needs, optionally keeping only the first ``max_items`` (how
  ``debug=smoke`` shrinks any experiment's grid).
- ``${ag.ddp_start_method:}`` is ``popen`` when SLURM started one task per device (no
  re-launch: Lightning's script re-launch would re-run a Hydra sweep) and ``spawn``
  otherwise, which starts the ranks from inside the running job instead of re-running
  ``sys.argv``.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def _join(items: Any, max_items: int | None = None) -> str:
    values = [str(item) for item in items]
    if max_items is not None:
        values = values[: int(max_items)]
    return ",".join(values)


def _ddp_start_method() -> str:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return "popen" if SLURMEnvironment.detect() else "spawn"


def register_resolvers() -> None:
    for name, function in (("ag.join", _join), ("ag.ddp_start_method", _ddp_start_method)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


register_resolvers()
