"""predict.py and export.py on real checkpoints of tiny trained models (CPU, synthetic data).

Each model is trained in-process for two batches from the real composed config
(``debug=fast``) and saved with ``trainer.save_checkpoint``, so the checkpoint is what
train.py writes: class path, hyperparameters, threshold buffer, datamodule settings.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import hydra
import lightning as L
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hydra import compose, initialize_config_dir

from anomaly_gan.inference import CSV_COLUMNS, predict
from anomaly_gan.models.checkpoint import CheckpointError, load_model
from anomaly_gan.nets.blocks import SelfAttention2d
from anomaly_gan.onnx_export import (
    ExportError,
    ScoringModule,
    default_output,
    export_onnx,
    verify_onnx,
)

from .conftest import CONFIG_DIR, REPO_ROOT

GOOD_IMAGES = 4


# Skip-SA has self-attention at every encoder level, 32x32 positions at the first: the
# strongest test of the fused attention's export. Narrow, so it trains in seconds.
MODELS = {
    "ganomaly": [],
    "skip_sa": ["model.base_width=8", "model.max_width=32"],
}


def _train_checkpoint(model_name: str, cache_dir: Path, directory: Path) -> Path:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"model={model_name}",
                "debug=fast",
                f"paths.cache_dir={cache_dir}",
                *MODELS[model_name],
            ],
        )
    L.seed_everything(0)
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=datamodule)
    path = directory / f"{model_name}.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """GANomaly and Skip-SA (self-attention), 32 px, trained for two batches."""
    directory = tmp_path_factory.mktemp("checkpoints")
    return {name: _train_checkpoint(name, cache_dir, directory) for name in MODELS}


@pytest.fixture(scope="module")
def image_folder(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good images (one in a subfolder), a truncated PNG, a 5-channel TIFF, a float TIFF."""
    test_root = cache_dir / "synthetic" / "textile" / "test"
    folder = tmp_path_factory.mktemp("inputs")
    goods = sorted((test_root / "good").glob("*.png"))[:GOOD_IMAGES]
    for source in goods[:-1]:
        shutil.copy(source, folder / f"good_{source.name}")
    (folder / "sub").mkdir()
    shutil.copy(goods[-1], folder / "sub" / "deep.png")
    shutil.copy(sorted((test_root / "scratch").glob("*.png"))[0], folder / "scratch.png")
    data = goods[0].read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    _write_tiff(folder / "five_channels.tif", np.full((16, 16, 5), 100, np.uint8))
    cv2.imwrite(str(folder / "float_pixels.tiff"), np.zeros((16, 16, 3), np.float32))
    return folder


BAD_FILES = {
    "truncated.png": "truncated",
    "five_channels.tif": "cannot read",
    "float_pixels.tiff": "float32",
}


def _write_tiff(path: Path, pixels: np.ndarray) -> None:
    """An uncompressed TIFF with one 8-bit sample per channel (OpenCV cannot write 5)."""
    height, width, samples = pixels.shape
    data = pixels.tobytes()
    bits_at = 8 + len(data)
    bits = np.full(samples, 8, "<u2").tobytes()
    ifd_at = bits_at + len(bits)
    short, long_ = 3, 4
    entries = [
        (256, short, 1, width),
        (257, short, 1, height),
        (258, short, samples, bits_at),  # BitsPerSample: offset of the per-sample array
        (259, short, 1, 1),  # no compression
        (262, short, 1, 1),  # BlackIsZero
        (273, long_, 1, 8),  # strip offset
        (277, short, 1, samples),
        (278, short, 1, height),
        (279, long_, 1, len(data)),
        (284, short, 1, 1),  # interleaved samples
    ]
    ifd = len(entries).to_bytes(2, "little")
    for tag, kind, count, value in entries:
        ifd += tag.to_bytes(2, "little") + kind.to_bytes(2, "little")
        ifd += count.to_bytes(4, "little") + value.to_bytes(4, "little")
    header = b"II*\x00" + ifd_at.to_bytes(4, "little")
    path.write_bytes(header + data + bits + ifd + b"\x00\x00\x00\x00")


def _reference_tensor(path: Path, image_size: int) -> torch.Tensor:
    """The documented pre-processing written out independently: RGB, INTER_AREA, [-1, 1]."""
    rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    resized = cv2.resize(rgb, (image_size, image_size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(resized).permute(2, 0, 1).float() / 127.5 - 1.0


def _run(script: str, *overrides: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *overrides, f"paths.root_dir={cwd}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HYDRA_FULL_ERROR": "1"},
        check=False,
    )


def _rows(csv_path: Path) -> dict[str, dict[str, str]]:
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        return {Path(row["path"]).name: row for row in reader}


def test_predict_cli_scores_folder_and_names_bad_files(
    checkpoints: dict[str, Path], image_folder: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    done = _run(
        "predict.py",
        f"ckpt_path={checkpoints['ganomaly']}",
        f"input={image_folder}",
        f"output={output}",
        "batch_size=2",  # several batches, and a last one that is not full
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows(output / "predictions.csv")
    good = {name for name in rows if name.endswith(".png") and name != "truncated.png"}
    assert len(good) == GOOD_IMAGES + 1 and set(rows) == good | set(BAD_FILES)

    for name, reason in BAD_FILES.items():
        row = rows[name]
        assert row["score"] == "" and row["anomalous"] == "" and row["overlay"] == ""
        assert str(image_folder / name) in row["error"] and reason in row["error"].lower()
        assert "Not scored: " in done.stdout and name in done.stdout  # a console warning

    loaded = load_model(checkpoints["ganomaly"])
    threshold = loaded.threshold
    assert math.isfinite(threshold)
    for name in good:
        row = rows[name]
        assert row["error"] == ""
        path = Path(row["path"])
        with torch.no_grad():  # eval mode (load_model), one image alone
            expected = loaded.model(_reference_tensor(path, 32).unsqueeze(0))
        # abs 1e-5: the score sums the PCA companion's, in units of the validation normals'
        # spread, and its float32 projection rounds differently in a batch of 2 than alone.
        assert float(row["score"]) == pytest.approx(float(expected), rel=1e-5, abs=1e-5)
        assert float(row["threshold"]) == threshold
        assert row["anomalous"] == ("yes" if float(row["score"]) >= threshold else "no")
        overlay = cv2.imread(row["overlay"], cv2.IMREAD_UNCHANGED)
        source = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert overlay is not None and overlay.shape == (*source.shape[:2], 3)
        assert Path(row["overlay"]).parent == output / "overlays"
    assert Path(rows["deep.png"]["overlay"]).name == "sub__deep.png"


def test_predict_cli_fails_when_nothing_can_be_scored(
    checkpoints: dict[str, Path], image_folder: Path, tmp_path: Path
) -> None:
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    for name in BAD_FILES:
        shutil.copy(image_folder / name, only_bad / name)
    output = tmp_path / "out"
    done = _run(
        "predict.py",
        f"ckpt_path={checkpoints['ganomaly']}",
        f"input={only_bad}",
        f"output={output}",
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert "None of the 3 image(s)" in done.stdout + done.stderr
    assert all(row["error"] for row in _rows(output / "predictions.csv").values())


def test_predict_attention_model_uses_the_validation_error_scale_for_overlays(
    checkpoints: dict[str, Path], image_folder: Path, tmp_path: Path
) -> None:
    """The default map is the plain error: one fixed scale for every overlay, the error that
    almost no validation-normal pixel reaches, set at validation and kept in the checkpoint."""
    image_path = image_folder / "scratch.png"
    summary = predict(checkpoints["skip_sa"], image_path, tmp_path, batch_size=1)
    (prediction,) = summary.predictions
    loaded = load_model(checkpoints["skip_sa"])
    expected = float(loaded.model.scorer.localization_scale)
    assert loaded.model.scorer.localization_map == "error" and 0 < expected < float("inf")
    assert float(prediction.map_scale) == pytest.approx(expected, rel=1e-5)
    assert prediction.overlay is not None and prediction.overlay.is_file()
    with torch.no_grad():
        expected_score = loaded.model(_reference_tensor(image_path, 32).unsqueeze(0))
    assert prediction.score == pytest.approx(float(expected_score), rel=1e-5)


def test_load_model_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_model(tmp_path / "missing.ckpt")
    foreign = tmp_path / "weights.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match=r"weights\.ckpt is not a Lightning checkpoint"):
        load_model(foreign)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"garbage\.ckpt could not be loaded"):
        load_model(garbage)


def test_checkpoint_without_class_path_is_refused_with_the_fix(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    checkpoint = torch.load(checkpoints["skip_sa"], weights_only=True)
    assert load_model(checkpoints["skip_sa"]).class_path == (
        "anomaly_gan.models.skip_sa.SkipSelfAttentionGan"
    )
    del checkpoint["anomaly_gan"]
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    with pytest.raises(CheckpointError) as refused:
        load_model(old)
    message = str(refused.value)
    assert str(old) in message and "lacks 'anomaly_gan.class_path'" in message
    assert "anomaly_gan.models.skip_sa.SkipSelfAttentionGan" in message  # the classes to name
    # The fix the message gives works.
    checkpoint["anomaly_gan"] = {"class_path": "anomaly_gan.models.skip_sa.SkipSelfAttentionGan"}
    torch.save(checkpoint, old)
    assert load_model(old).class_path == "anomaly_gan.models.skip_sa.SkipSelfAttentionGan"


def _real_batch(folder: Path, size: int) -> torch.Tensor:
    paths = sorted(p for p in folder.rglob("*.png") if p.name != "truncated.png")
    images = [_reference_tensor(path, 32) for path in paths]
    return torch.stack([images[i % len(images)] for i in range(size)])


def test_export_cli_writes_onnx_next_to_checkpoint(
    checkpoints: dict[str, Path], image_folder: Path, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ganomaly.ckpt"
    shutil.copy(checkpoints["ganomaly"], ckpt)
    done = _run("export.py", f"ckpt_path={ckpt}", "format=onnx", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    onnx_path = default_output(ckpt)
    assert onnx_path == tmp_path / "ganomaly.onnx" and onnx_path.is_file()

    graph = onnx.load(str(onnx_path))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    meta = {entry.key: entry.value for entry in graph.metadata_props}
    loaded = load_model(ckpt)
    assert float(meta["anomaly_gan.threshold"]) == loaded.threshold
    assert (meta["anomaly_gan.image_size"], meta["anomaly_gan.channels"]) == ("32", "3")

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for batch in (3, 5):
        images = _real_batch(image_folder, batch)
        scores, maps = session.run(None, {"image": images.numpy()})
        with torch.no_grad():
            expected_scores = loaded.model(images)
            _, output = loaded.model.score(images)
            expected_maps = loaded.model.anomaly_map(images, output.reconstruction)
        assert scores.shape == (batch,) and maps.shape == (batch, 1, 32, 32)
        # Standardised maps are z-scores in the tens: relative 1e-5 there, absolute 1e-4 near 0.
        np.testing.assert_allclose(scores, expected_scores.numpy(), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(maps, expected_maps.numpy(), rtol=1e-5, atol=1e-4)

    assert max(verify_onnx(loaded, onnx_path, batch_sizes=(3, 5)).values()) <= 1e-4
    with torch.no_grad():  # the file no longer matches these weights: verification says so
        for parameter in loaded.model.generator.parameters():
            parameter.mul_(1.5)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        verify_onnx(loaded, onnx_path, batch_sizes=(3,))


def _make_attention_count(
    model: torch.nn.Module, attention: list[SelfAttention2d], images: torch.Tensor
) -> None:
    """Make the network's function depend strongly on its attention.

    After two training steps from the DCGAN init (weights N(0, 0.02)) activations are tiny,
    the reconstruction is ~0 and gamma ~1e-4: attention changes the maps by ~1e-4, so a
    broken attention export would still pass a 1e-4 check. PyTorch's default init,
    BatchNorm statistics from real images, gamma = 1 and sharper queries (a softmax far from
    uniform) give a network whose scores and maps move when the attention does.
    """
    torch.manual_seed(0)
    for layer in model.modules():
        if isinstance(layer, torch.nn.Conv2d | torch.nn.ConvTranspose2d | torch.nn.Linear):
            layer.reset_parameters()
        elif isinstance(layer, torch.nn.BatchNorm2d):
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average over the calibration pass
    model.train()
    model.generator(images)
    model.discriminator(images)
    model.eval()
    for layer in attention:
        layer.gamma.fill_(1.0)
        layer.query.weight.mul_(5.0)


def test_attention_model_exports_with_fused_attention(
    checkpoints: dict[str, Path], image_folder: Path, tmp_path: Path
) -> None:
    """Skip-SA's fused (SDPA) self-attention exports; scores match PyTorch to 1e-4."""
    loaded = load_model(checkpoints["skip_sa"])
    attention = [m for m in loaded.model.modules() if isinstance(m, SelfAttention2d)]
    assert len(attention) == 3  # the default config attends on encoder levels 3, 4 and 5
    module = ScoringModule(loaded.model)
    images = _real_batch(image_folder, 3)
    with torch.no_grad():
        _make_attention_count(loaded.model, attention, _real_batch(image_folder, 8))
        with_attention = module(images)[1]
        for layer in attention:
            layer.gamma.zero_()
        assert (module(images)[1] - with_attention).abs().max() > 0.1
        for layer in attention:
            layer.gamma.fill_(1.0)

    onnx_path = export_onnx(loaded, tmp_path / "skip_sa.onnx")
    # Real images: the BatchNorm statistics above come from them, and on uniform noise this
    # artificial network is ill-conditioned in float32 (PyTorch itself is then 1e-2 off
    # float64), so verify_onnx's random batches would test the network, not the export.
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for batch in (3, 5):
        images = _real_batch(image_folder, batch)
        scores, maps = session.run(None, {"image": images.numpy()})
        with torch.no_grad():
            expected_scores, expected_maps = module(images)
        # The ill-conditioned network above, and standardised maps divide its error by the
        # small spread of a two-batch model: relative 5e-4 (measured ~1e-4). The default
        # difference map sums x - x̂ over a σ=4 Gaussian (25×25 taps) before standardising,
        # so a few near-zero map values differ by up to 2e-4 (measured): atol 1e-3 on the
        # maps, still 100× below the 0.1 that removing the attention changes them by.
        np.testing.assert_allclose(scores, expected_scores.numpy(), rtol=5e-4, atol=1e-4)
        np.testing.assert_allclose(maps, expected_maps.numpy(), rtol=5e-4, atol=1e-3)
