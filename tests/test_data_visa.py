"""VisA from its raw layout + split CSV, cross-class test sets, test_limit, end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from anomaly_gan.data import DatasetError, DataWarning, VisADataModule
from tests.conftest import run_train
from tests.test_data_fixtures import VISA_TRIO, make_visa, read_visa_csv, write_visa_csv


@pytest.fixture(scope="module")
def visa_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_visa(tmp_path_factory.mktemp("visa"))


def _dm(root: Path, **kwargs) -> VisADataModule:
    defaults = {"image_size": 16, "batch_size": 4, "val_fraction": 0.25, "cache": False}
    return VisADataModule(root=str(root), **{**defaults, **kwargs})


def test_split_comes_from_the_csv(visa_root: Path) -> None:
    dm = _dm(visa_root)
    dm.setup()
    train_val = dm.train_samples + dm.val_samples
    assert len(train_val) == 12 and (len(dm.train_samples), len(dm.val_samples)) == (9, 3)
    assert all(
        s.label == 0 and "/candle/Data/Images/Normal/" in str(s.image_path) for s in train_val
    )
    test = dm.test_samples["candle"]
    assert [s.label for s in test] == [0] * 4 + [1] * 4
    assert all(s.mask_path is not None for s in test if s.label == 1)
    assert all(s.mask_path is None for s in test if s.label == 0)
    assert dm.test_category_names == ["candle"]


def test_masks_are_binarised_and_batches_follow_the_contract(visa_root: Path) -> None:
    dm = _dm(visa_root, eval_batch_size=8, channels=1)
    dm.setup()
    batch = next(iter(dm.test_dataloader()[0]))
    assert batch["image"].shape == (8, 1, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["mask"].shape == (8, 1, 16, 16)
    assert set(batch["mask"].unique().tolist()) == {0.0, 1.0}  # pixel value 3 became 1
    assert batch["mask"][:4].sum() == 0 and (batch["mask"][4:].sum(dim=(1, 2, 3)) > 0).all()
    assert batch["label"].tolist() == [0] * 4 + [1] * 4
    assert batch["defect_type"] == ["good"] * 4 + ["anomaly"] * 4


def test_cross_class_gives_one_loader_per_category(visa_root: Path) -> None:
    dm = _dm(visa_root, test_categories=["fryum", "candle", "cashew"])
    dm.setup()
    assert dm.test_category_names == ["fryum", "candle", "cashew"]
    loaders = dm.test_dataloader()
    assert len(loaders) == 3
    for name, loader in zip(dm.test_category_names, loaders, strict=True):
        paths = [p for batch in loader for p in batch["image_path"]]
        assert len(paths) == 8 and all(f"/{name}/Data/Images/" in p for p in paths)
    # training data is the training category only
    assert all("/candle/" in str(s.image_path) for s in dm.train_samples + dm.val_samples)


def test_test_limit_is_balanced_seeded_and_per_category(tmp_path: Path) -> None:
    root = make_visa(tmp_path, n_train=4, n_test_normal=7, n_test_anomaly=5)

    def subset(seed: int, limit: int = 6) -> dict[str, list[str]]:
        dm = _dm(root, test_categories=list(VISA_TRIO), test_limit=limit, seed=seed)
        dm.setup()
        return {
            name: [f"{s.label}:{s.image_path.name}" for s in samples]
            for name, samples in dm.test_samples.items()
        }

    chosen = subset(0)
    for names in chosen.values():
        assert len(names) == 6 and sum(n.startswith("1:") for n in names) == 3
    assert subset(0) == chosen
    assert subset(1) != chosen
    # drawn per category: the candle subset does not depend on the other categories
    dm = _dm(root, test_limit=6, seed=0)
    dm.setup()
    assert [f"{s.label}:{s.image_path.name}" for s in dm.test_samples["candle"]] == chosen["candle"]

    with pytest.warns(DataWarning, match=r"only 5 anomalous images, fewer than the 6"):
        short = subset(0, limit=12)
    assert all(len(names) == 6 + 5 for names in short.values())


@pytest.mark.parametrize(
    ("bad_path", "reason"),
    [("../outside/0000.JPG", "points outside"), ("/etc/passwd", "absolute path")],
)
def test_csv_row_pointing_outside_the_root_is_refused(
    tmp_path: Path, bad_path: str, reason: str
) -> None:
    root = make_visa(tmp_path / "visa", categories=["candle"], n_train=2, n_test_normal=1)
    rows = read_visa_csv(root)
    rows[1][3] = bad_path
    csv_path = write_visa_csv(root, rows)
    with pytest.raises(DatasetError, match=reason) as error:
        _dm(root).setup()
    message = str(error.value)
    assert str(csv_path) in message and "line 3" in message and bad_path in message


def test_unknown_category_lists_the_valid_ones(visa_root: Path) -> None:
    with pytest.raises(DatasetError, match="Unknown VisA category 'pcb9'") as error:
        _dm(visa_root, test_categories=["candle", "pcb9"]).setup()
    assert "candle, cashew, fryum" in str(error.value)


def test_missing_root_names_path_layout_and_download(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as error:
        _dm(missing).setup()
    message = str(error.value)
    assert str(missing) in message and "split_csv/1cls.csv" in message
    assert "data.download=true" in message


def test_missing_csv_and_missing_category_folder_are_named(tmp_path: Path) -> None:
    root = make_visa(tmp_path, categories=["candle"], n_train=2, n_test_normal=1)
    (root / "split_csv" / "1cls.csv").rename(root / "split_csv" / "other.csv")
    with pytest.raises(DatasetError, match="split file") as error:
        _dm(root).setup()
    assert str(root / "split_csv" / "1cls.csv") in str(error.value)
    dm = _dm(root, split_csv="split_csv/other.csv")
    dm.setup()
    assert len(dm.test_samples["candle"]) == 5


def test_image_without_mask_and_missing_image_are_errors(tmp_path: Path) -> None:
    root = make_visa(tmp_path, categories=["candle"], n_train=2, n_test_normal=1)
    mask = root / "candle" / "Data" / "Masks" / "Anomaly" / "001.png"
    mask.unlink()
    with pytest.raises(DatasetError, match="has no mask") as error:
        _dm(root).setup()
    assert str(mask) in str(error.value)
    image = root / "candle" / "Data" / "Images" / "Normal" / "0001.JPG"
    image.unlink()
    with pytest.raises(DatasetError, match="does not exist") as error:
        _dm(root).setup()
    assert str(image) in str(error.value)


def test_cross_class_run_end_to_end_writes_metrics_per_category(
    tmp_path: Path, visa_root: Path
) -> None:
    completed = run_train(
        "data=visa",
        f"data.root={visa_root}",
        "data.category=candle",
        "data.test_categories=[candle,cashew,fryum]",
        "debug=fast",
        f"paths.root_dir={tmp_path}",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    (run_dir,) = sorted((tmp_path / "outputs" / "train").iterdir())
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    assert list(results["categories"]) == ["candle", "cashew", "fryum"]
    for name, metrics in results["categories"].items():
        assert (metrics["n_normal"], metrics["n_anomalous"]) == (4, 4), name
        assert math.isfinite(metrics["auroc"]) and 0 <= metrics["auroc"] <= 1, name
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for name in VISA_TRIO:
        assert f"test/{name}/auroc" in header
    # decoded images were cached under paths.cache_dir
    assert list((tmp_path / ".cache" / "images").rglob("*.npy"))


def test_no_training_rows_is_an_error_naming_the_csv(tmp_path: Path) -> None:
    root = make_visa(tmp_path, categories=["candle"], n_train=2, n_test_normal=1)
    rows = [row for row in read_visa_csv(root) if row[1] != "train"]
    csv_path = write_visa_csv(root, rows)
    with pytest.raises(DatasetError, match="No training images for category 'candle'") as error:
        _dm(root).setup()
    assert str(csv_path) in str(error.value)
