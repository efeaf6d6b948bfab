"""Resolution and aspect ratio (``data.resize``): squash / pad / crop, and tiles of a larger
frame that the model scores one by one and stitches into a map of the whole image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly_gan.data import MVTecDataModule
from anomaly_gan.data.geometry import Geometry, tile_frame
from anomaly_gan.inference import score_images
from anomaly_gan.models import Ganomaly, SkipGanomaly
from anomaly_gan.models.checkpoint import load_model
from anomaly_gan.tiling import TileLayout, split_tiles, stitch_tiles, tile_starts
from tests.conftest import run_train
from tests.test_data import make_tiny_mvtec


# ------------------------------------------------------------------------- tiles
def test_tile_starts_cover_the_side_and_end_at_the_border() -> None:
    assert tile_starts(64, 32, 16) == [0, 16, 32]
    assert tile_starts(70, 32, 16) == [0, 16, 32, 38]  # last tile moved back, no padding
    assert tile_starts(32, 32, 16) == [0]
    with pytest.raises(ValueError, match="cannot tile"):
        tile_starts(20, 32, 16)


@pytest.mark.parametrize("height, width", [(48, 80), (37, 53), (32, 32)])
def test_stitching_the_tiles_gives_back_the_frame(height: int, width: int) -> None:
    frames = torch.randn(2, 3, height, width)
    layout = TileLayout.for_frame(height, width, 32)
    tiles = split_tiles(frames, layout)
    assert tiles.shape == (2 * layout.count, 3, 32, 32)
    # tile i of image 1 is the same window as tile i of image 0 (row-major positions)
    top, left = layout.rows[-1], layout.cols[-1]
    assert torch.equal(tiles[2 * layout.count - 1], frames[1, :, top : top + 32, left : left + 32])
    assert torch.allclose(stitch_tiles(tiles, layout), frames, atol=1e-6)


def test_a_model_scores_a_frame_tile_by_tile_into_a_map_of_the_frame_size() -> None:
    torch.manual_seed(0)
    model = SkipGanomaly(image_size=32, channels=3).eval()
    frames = torch.rand(2, 3, 48, 80) * 2 - 1
    with torch.no_grad():
        scores, output, maps = model.score_with_map(frames)
        layout = TileLayout.for_frame(48, 80, 32)
        by_hand = stitch_tiles(model.generate(split_tiles(frames, layout)).reconstruction, layout)
    assert scores.shape == (2,)
    assert maps.shape == (2, 1, 48, 80)
    assert output.reconstruction.shape == frames.shape
    assert torch.allclose(output.reconstruction, by_hand, atol=1e-5)
    # One image's score does not depend on the other image of the batch.
    with torch.no_grad():
        alone = model.score_with_map(frames[1:])[0]
    assert torch.allclose(alone, scores[1:], atol=1e-5)


def test_latent_distance_of_a_frame_is_the_mean_over_its_tiles() -> None:
    torch.manual_seed(0)
    model = Ganomaly(image_size=32, channels=1).eval()
    frame = torch.rand(1, 1, 32, 64) * 2 - 1
    with torch.no_grad():
        _, latent_in, latent_out = model.reconstruct(frame)
        tiles = split_tiles(frame, TileLayout.for_frame(32, 64, 32))
        _, tile_in, tile_out = model.reconstruct(tiles)
    whole = model.scorer.latent_distance(latent_in, latent_out)
    assert torch.allclose(whole, model.scorer.latent_distance(tile_in, tile_out).mean(), rtol=1e-5)


# ---------------------------------------------------------------------- geometry
def test_pad_and_crop_keep_the_aspect_ratio() -> None:
    image = np.zeros((20, 40, 1), np.uint8)
    image[:, :20] = 200  # left half bright
    padded = Geometry(16, "pad").resize_image(image)
    assert padded.shape == (16, 16, 1)
    # 20x40 -> 8x16 band in the middle rows, the rest repeats the border rows
    assert padded[4:12, :8].min() == 200 and padded[4:12, 8:].max() == 0
    mask = np.ones((20, 40), np.uint8)
    padded_mask = Geometry(16, "pad").resize_mask(mask)
    assert padded_mask[:4].sum() == 0 and padded_mask[4:12].all()  # padding is normal
    cropped = Geometry(16, "crop").resize_image(image)
    assert cropped.shape == (16, 16, 1)  # 20x40 -> 16x32, centre 16 columns
    assert cropped[:, :8].min() == 200 and cropped[:, 8:].max() == 0
    squashed = Geometry(16).resize_image(image)
    assert squashed.shape == (16, 16, 1) and squashed[:, :8].min() == 200


def test_tile_frame_follows_the_median_aspect_ratio() -> None:
    assert tile_frame([(256, 341), (256, 340), (600, 800)], 64, 2) == (128, 170)
    assert tile_frame([(500, 1250)], 64, 2) == (128, 320)
    assert tile_frame([(1250, 500)], 64, 2) == (320, 128)
    assert tile_frame([(90, 100)], 64, 1) == (64, 71)


def test_unknown_resize_mode_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data.resize='stretch'.*squash, pad, crop, tile"):
        MVTecDataModule(root=tmp_path, category="widget", resize="stretch")
    with pytest.raises(ValueError, match=r"data\.tile_scale"):
        MVTecDataModule(root=tmp_path, category="widget", resize="tile", tile_scale=0.5)


def test_bad_augmentation_names_the_entry(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data.augmentations\[1\].name='Sharpen2'"):
        MVTecDataModule(
            root=tmp_path,
            category="widget",
            augmentations=[{"name": "HorizontalFlip"}, {"name": "Sharpen2"}],
        )
    with pytest.raises(ValueError, match=r"data.augmentations\[0\]"):
        MVTecDataModule(root=tmp_path, category="widget", augmentations=["HorizontalFlip"])


def test_augmentations_change_training_images_only(tmp_path: Path) -> None:
    make_tiny_mvtec(tmp_path, color=False)
    flips = [{"name": "HorizontalFlip", "p": 1.0}]
    plain = MVTecDataModule(
        root=tmp_path, category="widget", image_size=16, channels=1, cache=False
    )
    flipped = MVTecDataModule(
        root=tmp_path,
        category="widget",
        image_size=16,
        channels=1,
        augmentations=flips,
        cache=False,
    )
    for dm in (plain, flipped):
        dm.setup()
    train_plain = plain._dataset(plain.train_samples, training=True)[0]["image"]
    train_flipped = flipped._dataset(flipped.train_samples, training=True)[0]["image"]
    assert torch.equal(train_flipped, train_plain.flip(-1))
    assert torch.equal(
        next(iter(flipped.val_dataloader()))["image"], next(iter(plain.val_dataloader()))["image"]
    )


def test_tile_mode_trains_on_tiles_and_tests_whole_frames(tmp_path: Path) -> None:
    make_tiny_mvtec(tmp_path)  # 20x24 (height x width) images
    dm = MVTecDataModule(
        root=tmp_path, category="widget", image_size=16, channels=3, resize="tile", batch_size=4
    )
    dm.setup()
    assert dm.frame == (32, 38)  # shorter side 2 x 16, the images' aspect ratio
    assert dm.hparams["frame"] == [32, 38]
    assert next(iter(dm.train_dataloader()))["image"].shape == (4, 3, 16, 16)
    assert next(iter(dm.val_dataloader()))["image"].shape[-2:] == (32, 38)
    test = next(iter(dm.test_dataloader()[0]))
    assert test["image"].shape[-2:] == (32, 38) and test["mask"].shape[-2:] == (32, 38)
    # the masks follow their images into the frame (the crack mask covers ~8x7 source px)
    assert test["mask"].sum() > 0


def test_tiled_run_end_to_end_maps_predict_and_reference(tmp_path: Path) -> None:
    """train.py with data.resize=tile: frame-size maps, a tiled reference, and predict.py
    scores a file as the test did (the checkpoint carries the frame)."""
    make_tiny_mvtec(tmp_path / "data", n_train=12)
    run_dir = tmp_path / "run"
    result = run_train(
        "data=mvtec",
        f"data.root={tmp_path / 'data'}",
        "data.category=widget",
        "data.resize=tile",
        "data.image_size=32",
        "data.tile_scale=1.5",
        "data.val_fraction=0.4",
        "data.channels=3",
        "data.batch_size=4",
        "data.num_workers=0",
        "model=ganomaly",
        "trainer.max_epochs=1",
        "logger=csv",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["config"]["resize"] == "tile"
    block = results["categories"]["widget"]
    assert "error" not in block["reference"], block["reference"]
    assert block["reference"]["pca"]["auroc"] is not None
    assert block["pixel_auroc"] is not None  # maps and masks share the frame's size
    loaded = load_model(run_dir / "checkpoints" / "last.ckpt")
    assert loaded.preprocessing.geometry == Geometry(32, "tile", (48, 58))
    assert tuple(loaded.model.scorer.map_mean.shape[-2:]) == (48, 58)
    # predict.py's path scores a file exactly as the data module's test frames are scored
    dm = MVTecDataModule(
        root=tmp_path / "data",
        category="widget",
        image_size=32,
        tile_scale=1.5,
        channels=3,
        resize="tile",
        normalization=loaded.preprocessing.normalization,  # data=mvtec's, read from the file
        cache=False,
    )
    dm.setup()
    batch = next(iter(dm.test_dataloader()[0]))
    paths = [Path(p) for p in batch["image_path"]]
    with torch.no_grad():
        expected = loaded.model.score_with_map(batch["image"])[0]
    predicted = [p.score for p in score_images(loaded, paths)]
    assert predicted == pytest.approx(expected.tolist(), rel=1e-5)
