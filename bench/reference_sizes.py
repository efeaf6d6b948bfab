"""The no-learning references at larger inputs: does resolution alone help on the four sets?

    python bench/reference_sizes.py /tmp/study/table bench/results/reference_sizes.jsonl

Takes the run folders of a ``bench/quality.py`` table (``<work dir>/<set>/ganomaly_64_seed<N>``)
for their data settings (normalisation, split seeds) and the model's scorer, and scores the
mean-image and PCA references (``k`` the largest candidate, as every run does) at 64, 128
and 256 px on the selection and the report part. No training; the pixel metrics at 256 px
make the magnetic tiles' report part take about 11 minutes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
from _common import ensure_repo_on_path

ensure_repo_on_path()

import torch  # noqa: E402

from anomaly_gan.data import MVTecDataModule  # noqa: E402
from anomaly_gan.evaluation.reference import reference_metrics  # noqa: E402
from anomaly_gan.models.checkpoint import load_model  # noqa: E402

SETS = ("mvtec3d_tire", "mpdd_metal_plate", "magnetic_tile", "elpv")
SIZES = (64, 128, 256)
ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    table, out = Path(sys.argv[1]), Path(sys.argv[2])
    with out.open("a") as handle:
        for dataset in SETS:
            for seed in (0, 1):
                run = json.loads(
                    (table / dataset / f"ganomaly_64_seed{seed}" / "results.json").read_text()
                )
                checkpoint = run["checkpoint"]["path"]
                scorer = load_model(checkpoint).model.scorer.to_config()
                saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
                for size in SIZES:
                    for part in ("selection", "report"):
                        start = time.time()
                        data = dict(saved["datamodule_hyper_parameters"])
                        data.pop("_target_", None)
                        data.update(
                            root=str(ROOT),
                            image_size=size,
                            test_part=part,
                            batch_size=64,
                            selection_fraction=data.get("selection_fraction") or 0.3,
                            num_workers=0,
                            cache=False,
                            cache_dir=None,
                            download=False,
                        )
                        datamodule = MVTecDataModule(**data)
                        datamodule.prepare_data()
                        datamodule.setup("fit")
                        datamodule.setup("test")
                        block = reference_metrics(datamodule, scorer, 0.95)[dataset]
                        row = {
                            "dataset": dataset,
                            "seed": seed,
                            "size": size,
                            "part": part,
                            "mean": round(block["mean"]["auroc"], 4),
                            "pca": round(block["pca"]["auroc"], 4),
                            "k": block["pca"]["k"],
                            "seconds": round(time.time() - start, 1),
                        }
                        print(json.dumps(row), flush=True)
                        handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
