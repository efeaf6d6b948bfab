"""Cold vs warm data epoch (the decoded-image cache) recorded into BENCHMARKS.md.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python bench/data_epoch.py [data_loading.py options]

Runs ``bench/data_loading.py`` (which writes 1024 px PNGs and times epochs of the real
``MVTecDataModule`` train loader: cold = decode + resize, warm = memory or disk cache) and
stores its table in ``bench/results/data_epoch.json`` and the ``data_epoch`` section of
``BENCHMARKS.md``. Its options (``--n``, ``--size``, ``--num-workers``, ...) pass through;
``--no-record`` prints the table only (a quick look: ``--n 8 --size 256 --no-record``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

ROW = re.compile(r"^(?P<name>.+?)\s{2,}(?P<images>\d+)\s+(?P<seconds>[\d.]+)\s+(?P<rate>[\d.]+)$")


def main() -> int:
    script = Path(__file__).with_name("data_loading.py")
    options = [arg for arg in sys.argv[1:] if arg != "--no-record"]
    done = subprocess.run(
        [sys.executable, str(script), *options], capture_output=True, text=True, check=False
    )
    print(done.stdout, end="")
    if done.returncode not in (0, 1):  # 1 = ran, but missed its speed-up target
        print(done.stderr, file=sys.stderr)
        return done.returncode
    rows = [m.groupdict() for line in done.stdout.splitlines() if (m := ROW.match(line.strip()))]
    summary = [line for line in done.stdout.splitlines() if line.startswith(("wrote", "speed-up"))]
    data = {
        "machine": common.machine("cpu"),
        "args": options,
        "rows": rows,
        "summary": summary,
        "exit_status": done.returncode,
    }
    table = common.table(
        ["epoch", "images", "seconds", "images/s"],
        [[r["name"], r["images"], r["seconds"], r["rate"]] for r in rows],
    )
    body = "\n".join(
        [
            common.machine_line(data["machine"]),
            "",
            "`bench/data_loading.py`: PNGs in MVTec layout through the real `MVTecDataModule` "
            "train loader; cold = every image decoded and resized, warm = decoded-image cache "
            "(memory, then a new loader reading the disk cache).",
            "",
            *(f"{line}  " for line in summary[:1]),
            "",
            table,
            "",
            *summary[1:],
        ]
    )
    title = "Data epoch: cold vs warm (decoded-image cache)"
    common.publish("data_epoch", title, data, body, "--no-record" not in sys.argv[1:])
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
