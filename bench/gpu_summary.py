"""The "GPU (issue 16)" section of BENCHMARKS.md, laid out from the GPU runs' JSON files.

    .venv/bin/python bench/gpu_summary.py               # rewrite the section from bench/results
    .venv/bin/python bench/gpu_summary.py --no-record   # print it only
    .venv/bin/python bench/gpu_summary.py --merge DIR   # a gpu_check.sh run's files_at

Reads what ``bench/gpu_check.sh`` leaves in ``bench/results/`` (``speed_cuda_bf16_cl.json``:
the new defaults, bf16-mixed + channels-last; ``speed_cuda.json``: fp32;
``attention_memory_cuda.json``; ``data_feed_cuda.json``; ``anogan_speed_cuda.json``;
``precision_cuda.json``) and sets the issue's table beside its goals. A figure with no file
behind it reads "not measured (no GPU lent to this task)": cells are measured or empty,
never estimated. ``--device cpu`` lays the same section out from CPU files (the plumbing
test of ``SMOKE=1 bench/gpu_check.sh``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

NOT_MEASURED = "not measured"
WHY_NOT = "not measured = no GPU was lent to the task that wrote this; never estimated"
SECTION = "gpu_issue16"
#: issue 16's goals for Skip-SA (paper config) at 256 px, batch 32, in bf16 on H100/H200
SKIP_SA_MAX_GIB, SKIP_SA_MIN_IMG_S = 16.0, 180.0
DATA_FEED_GOAL = 0.9
SIZE, BATCH = 256, 32

COMMANDS = """\
One prepared run fills this section (15 minutes of device time in all; the run itself ends
within 570 s, each part under its own time limit):

    bash bench/gpu_check.sh --prepare     # here, once: wheels the GPU image lacks + one real set
    # on the GPU machine: run(command="bash bench/gpu_check.sh", carry=[".gpu"], timeout_s=600)
    bash bench/gpu_check.sh --merge <files_at>   # here: its JSON and sections into the repo

What it runs, in this order (commands as on the GPU machine):

    python bench/speed.py --device cuda --precision bf16-mixed --channels-last --sizes 256 \\
        --batch 32 --warmup 2 --steps 5 --modes train          # the new defaults, 5 models
    python bench/data_feed.py --device cuda --size 256 --batch 32 --precision bf16-mixed \\
        --channels-last --warm-epochs 3 --data-root .gpu/data  # feed ratio, magnetic tiles
    python bench/attention_memory.py --device cuda --configs skip_sa:256 mife:256
    python bench/precision_check.py --device cuda --seeds 0 ...  # bf16 vs fp32 metrics
    python bench/anogan_speed.py --device cuda
    python bench/speed.py --device cuda --sizes 256 --batch 32 --warmup 2 --steps 5 \\
        --modes train                                          # fp32, for the comparison
    python bench/gpu_summary.py                                # this section
"""


def _load(name: str) -> dict[str, Any] | None:
    return common.read_json(name)


def _train_row(data: dict[str, Any] | None, model: str) -> dict[str, Any] | None:
    if data is None:
        return None
    return common.find_row(data["rows"], model=model, size=SIZE, mode="train")


def set_size(size: int, batch: int) -> None:
    """The size and batch the tables are read at (``SMOKE=1`` runs 32 px, batch 4)."""
    global SIZE, BATCH
    SIZE, BATCH = size, batch


SECTION_RE = re.compile(r"<!-- BEGIN (\S+) -->\n## (.*?)\n\n(.*?)\n<!-- END \1 -->", re.DOTALL)


def merge(folder: Path, device: str) -> int:
    """Bring a ``gpu_check.sh`` archive in: its ``*_<device>*`` result files and every
    section whose name has ``_<device>`` (or is this one) that the run added or changed.
    Other files and sections stay as they are, so a CPU smoke archive cannot overwrite the
    CPU figures unless asked for with ``--device cpu``."""
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(folder / "gpu_check.tar.gz") as archive:
            archive.extractall(tmp, filter="data")
        root = Path(tmp)
        common.RESULTS.mkdir(parents=True, exist_ok=True)
        for path in sorted((root / "results").glob(f"*_{device}*")):
            shutil.copy2(path, common.RESULTS / path.name)
            print(f"merged {common.RESULTS / path.name}")
        after, before = (
            {m[0]: (m[1], m[2]) for m in SECTION_RE.findall((root / name).read_text())}
            for name in ("BENCHMARKS.md", "BENCHMARKS.before.md")
        )
    for name, (title, body) in after.items():
        ours = f"_{device}" in name or (name == SECTION and f"Device: {device}." in body)
        if ours and before.get(name) != (title, body):
            common.update_section(name, title, body)
            print(f"merged section {name} into {common.BENCHMARKS_MD}")
    return 0


def _rate(row: dict[str, Any] | None) -> str:
    if row is None:
        return NOT_MEASURED
    if "skipped" in row:
        return f"skipped: {row['skipped'][:80]}"
    return f"{row['images_per_s']:,.1f}"


def _gib(row: dict[str, Any] | None) -> str:
    if row is None or "skipped" in row:
        return "-" if row is not None else NOT_MEASURED
    return f"{row['peak_mib'] / 1024:.1f}"


def _tflops(row: dict[str, Any] | None, peak: dict[str, Any] | None) -> tuple[str, str]:
    if row is None or "flops_per_s" not in row:
        return (NOT_MEASURED, NOT_MEASURED) if row is None else ("-", "-")
    achieved = row["flops_per_s"] / 1e12
    share = (
        f"{100 * achieved / peak['tflops']:.1f}% of {peak['tflops']:g}" if peak else "peak unknown"
    )
    return f"{achieved:.3g}", share


def speed_table(device: str) -> tuple[str, list[str]]:
    """The issue's table at the new defaults, and the machine lines behind it."""
    new = _load(f"speed_{device}_bf16_cl")
    fp32 = _load(f"speed_{device}")
    machines = [
        f"- {label}: {common.machine_line(data['machine'])}"
        for label, data in (("bf16-mixed + channels-last", new), ("fp32", fp32))
        if data is not None
    ]
    peak = (new or {}).get("machine", {}).get("bf16_dense_peak")
    header = [
        "model (paper setting)",
        "fp32 train img/s",
        "bf16-mixed + channels-last train img/s (new default)",
        "peak GiB (fp32 / bf16)",
        "achieved TFLOP/s (bf16)",
        "of the bf16 dense peak",
    ]
    lines = []
    for model in common.model_names():
        row_new, row_fp32 = _train_row(new, model), _train_row(fp32, model)
        achieved, share = _tflops(row_new, peak)
        lines.append(
            [
                model,
                _rate(row_fp32),
                _rate(row_new),
                NOT_MEASURED
                if row_fp32 is None and row_new is None
                else f"{_gib(row_fp32)} / {_gib(row_new)}",
                achieved,
                share,
            ]
        )
    return common.table(header, lines), machines


def skip_sa_goal(device: str) -> str:
    row = _train_row(_load(f"speed_{device}_bf16_cl"), "skip_sa")
    goal = f"<= {SKIP_SA_MAX_GIB:g} GiB and >= {SKIP_SA_MIN_IMG_S:g} img/s"
    if row is None or "skipped" in row:
        return f"Skip-SA at {SIZE} px, batch {BATCH}, bf16 ({goal}): {NOT_MEASURED}."
    gib, rate = row["peak_mib"] / 1024, row["images_per_s"]
    met = gib <= SKIP_SA_MAX_GIB and rate >= SKIP_SA_MIN_IMG_S
    return (
        f"Skip-SA at {SIZE} px, batch {row['batch']}, bf16 ({goal}): {gib:.1f} GiB, "
        f"{rate:,.1f} img/s: **{'met' if met else 'missed'}**."
    )


def data_feed_line(device: str) -> str:
    data = _load(f"data_feed_{device}")
    goal = f">= {DATA_FEED_GOAL:.0%}"
    if data is None:
        return f"Data feed, end-to-end / synthetic step rate ({goal}): {NOT_MEASURED}."
    r = data["result"]
    return (
        f"Data feed, end-to-end / synthetic step rate ({goal}): **{r['ratio']:.1%}** "
        f"({r['end_to_end_images_per_s']:,.1f} / {r['synthetic_images_per_s']:,.1f} img/s, "
        f"`{r['model']}_paper` at {r['size']} px, batch {r['batch']}, `{r['dataset']}`, "
        f"num_workers {r['num_workers']} -> {r['num_workers_used']}, pin_memory "
        f"{r['pin_memory_used']}; the warm loader alone: {r['loader_images_per_s']:,.0f} img/s)."
    )


def attention_line(device: str) -> str:
    data = _load(f"attention_memory_{device}")
    if data is None:
        return f"Self-attention memory at {SIZE} px (fused vs N×N): {NOT_MEASURED}."
    cells = []
    for row in data["rows"]:
        value = "skipped" if "skipped" in row else f"{row['delta_mib']:.0f} MiB"
        cells.append(f"{row['model']} {row['size']} px {row['impl']}: {value}")
    return "Self-attention memory, batch 1 (`attention_memory` section): " + "; ".join(cells) + "."


def anogan_line(device: str) -> str:
    data = _load(f"anogan_speed_{device}")
    if data is None:
        return f"AnoGAN scoring (500-step latent search): {NOT_MEASURED}."
    rates = ", ".join(f"{r['images_per_s']:.3g} img/s at batch {r['batch']}" for r in data["rows"])
    steps = data["options"]["search_steps"]
    return f"AnoGAN scoring ({steps}-step latent search, `anogan_speed` section): {rates}."


def precision_line(device: str) -> str:
    path = common.RESULTS / f"precision_{device}.md"
    if not path.is_file():
        return f"bf16 vs fp32 metrics (same seeds): {NOT_MEASURED}."
    return f"bf16 vs fp32 metrics (same seeds): see `bench/results/{path.name}`."


def markdown(device: str) -> str:
    table, machines = speed_table(device)
    text = [
        "Issue 16's table at the new GPU defaults (`trainer=gpu`: bf16-mixed, channels-last), "
        f"the papers' networks (`model=<name>_paper`) at {SIZE} px, batch {BATCH}, median of "
        "5 training steps after 2 warm-up (`bench/speed.py`: `Trainer.fit` on in-memory "
        "images; peak = `torch.cuda.max_memory_allocated`; TFLOP/s = FLOPs of one training "
        "step / median step time, beside the device's bf16 dense peak from the vendor "
        f"datasheet). Device: {device}.",
        "",
        *(machines or [f"- Machine: {NOT_MEASURED} (no GPU lent to this task)."]),
        "",
        table,
        "",
        *([WHY_NOT, ""] if NOT_MEASURED in table else []),
        f"- {skip_sa_goal(device)}",
        f"- {data_feed_line(device)}",
        f"- {attention_line(device)}",
        f"- {precision_line(device)}",
        f"- {anogan_line(device)}",
        "",
        COMMANDS,
    ]
    return "\n".join(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--size", type=int, default=SIZE, help="image size of the rows read")
    parser.add_argument("--batch", type=int, default=BATCH, help="batch named in the text")
    parser.add_argument("--no-record", dest="record", action="store_false")
    parser.add_argument(
        "--merge", type=Path, default=None, metavar="DIR", help="bring a gpu_check.sh run in"
    )
    args = parser.parse_args()
    if args.merge is not None:
        return merge(args.merge, args.device)
    set_size(args.size, args.batch)
    body = markdown(args.device)
    print(body)
    if args.record:
        common.update_section(SECTION, "GPU (issue 16)", body)
        print(f"\n{common.BENCHMARKS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
