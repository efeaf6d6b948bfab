"""MVTec layout: cross-class test sets, unknown categories, mask pairing, download hints."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomaly_gan.data import DatasetError, MVTecDataModule
from tests.test_data import make_tiny_mvtec


def _dm(root: Path, **kwargs) -> MVTecDataModule:
    defaults = {"category": "widget", "image_size": 8, "batch_size": 4, "cache": False}
    return MVTecDataModule(root=str(root), **{**defaults, **kwargs})


def test_cross_class_tests_other_categories_of_the_same_root(tmp_path: Path) -> None:
    make_tiny_mvtec(tmp_path, "widget")
    make_tiny_mvtec(tmp_path, "gadget", color=False)
    dm = _dm(tmp_path, test_categories=["widget", "gadget"], channels=1)
    dm.setup()
    assert dm.test_category_names == ["widget", "gadget"]
    assert all("/widget/train/" in str(s.image_path) for s in dm.train_samples)
    for name, loader in zip(dm.test_category_names, dm.test_dataloader(), strict=True):
        batch = next(iter(loader))
        assert batch["image"].shape[1:] == (1, 8, 8)
        assert all(f"/{name}/test/" in path for path in batch["image_path"])

    only_other = _dm(tmp_path, test_categories=["gadget"])
    only_other.setup()
    assert only_other.test_category_names == ["gadget"]


def test_unknown_test_category_lists_the_valid_ones(tmp_path: Path) -> None:
    make_tiny_mvtec(tmp_path, "widget")
    with pytest.raises(DatasetError) as error:
        _dm(tmp_path, test_categories=["widget", "bottle"]).setup()
    message = str(error.value)
    assert str(tmp_path / "bottle") in message and "found under" in message
    assert "widget" in message and "carpet" in message  # on disk + the MVTec AD list


def test_missing_root_mentions_download(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for root in (tmp_path / "missing", empty):
        with pytest.raises(DatasetError) as error:
            _dm(root).setup()
        message = str(error.value)
        assert str(root) in message and "train/good" in message
        assert "data.download=true" in message


def test_mask_without_image_and_image_without_mask(tmp_path: Path) -> None:
    make_tiny_mvtec(tmp_path)
    image = tmp_path / "widget" / "test" / "crack" / "001.png"
    image.unlink()
    with pytest.raises(DatasetError, match="has no image") as error:
        _dm(tmp_path).setup()
    assert str(tmp_path / "widget" / "ground_truth" / "crack" / "001_mask.png") in str(error.value)

    make_tiny_mvtec(tmp_path / "b")
    mask = tmp_path / "b" / "widget" / "ground_truth" / "crack" / "000_mask.png"
    mask.unlink()
    with pytest.raises(DatasetError, match="has no mask") as error:
        _dm(tmp_path / "b").setup()
    assert str(tmp_path / "b" / "widget" / "test" / "crack" / "000.png") in str(error.value)

    make_tiny_mvtec(tmp_path / "c")
    stray = tmp_path / "c" / "widget" / "ground_truth" / "scratch"
    stray.mkdir()
    source = tmp_path / "c" / "widget" / "ground_truth" / "crack" / "000_mask.png"
    (stray / "000_mask.png").write_bytes(source.read_bytes())
    with pytest.raises(DatasetError, match="have no images") as error:
        _dm(tmp_path / "c").setup()
    assert str(stray) in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"test_limit": 1}, "data.test_limit"),
        ({"test_categories": "widget"}, "data.test_categories"),
        ({"test_categories": ["a", "a"]}, "more than once"),
        ({"cache": "yes"}, "data.cache"),
        ({"sha256": "abc"}, "data.sha256"),
    ],
)
def test_invalid_new_arguments_name_the_key(tmp_path: Path, kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        _dm(tmp_path, **kwargs)


@pytest.mark.parametrize(("color", "expected"), [(True, 3), (False, 1)])
def test_channels_auto_reads_grey_or_colour_off_the_training_images(
    tmp_path: Path, color: bool, expected: int
) -> None:
    make_tiny_mvtec(tmp_path, "widget", color=color)
    datamodule = _dm(tmp_path, channels="auto")
    assert datamodule.resolve_channels() == expected
    assert datamodule.hparams["channels"] == expected  # checkpoints carry the number
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape[1] == expected


def test_channels_auto_through_train_py_builds_a_grey_model(tmp_path: Path) -> None:
    import json

    from tests.conftest import run_train

    make_tiny_mvtec(tmp_path / "data", "widget", color=False, n_train=12)
    completed = run_train(
        "data=mvtec",
        f"data.root={tmp_path / 'data'}",
        "data.category=widget",
        "data.image_size=32",
        "data.batch_size=4",
        "data.num_workers=0",
        "debug=fast",
        "reference=false",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["channels"] == 1
    assert results["status"] == "completed"
