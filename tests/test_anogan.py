"""AnoGAN (Schlegl et al., IPMI 2017): a DCGAN whose test images are mapped to the latent
space by gradient descent on z. Real torch / Lightning / Hydra, CPU, tiny networks.

One ``python train.py model=anogan`` run (subprocess, as a user starts it) trains, validates
with the shorter search, recalibrates at test time with the full one and tests; its
checkpoint then serves the search, batch-independence, predict and export tests.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import anomaly_gan.resolvers  # noqa: F401  (the ${ag.*} resolvers, as train.py registers them)
from anomaly_gan.inference import predict
from anomaly_gan.losses import GeneratorLoss
from anomaly_gan.models import Anogan, GanAnomalyModule
from anomaly_gan.models.anogan import ANOGAN_SCORER, DCGAN_LOSS
from anomaly_gan.models.checkpoint import load_model
from anomaly_gan.onnx_export import ExportError, export
from tests.conftest import CONFIG_DIR, REPO_ROOT

SEARCH_STEPS = 6
VALIDATION_STEPS = 2
#: A tiny AnoGAN through train.py: 32 px, width 8, latent 16, 2 epochs x 3 batches of 8.
TINY = [
    "model=anogan",
    "debug=fast",
    "model.base_width=8",
    "model.latent_dim=16",
    f"model.search_steps={SEARCH_STEPS}",
    f"model.validation_search_steps={VALIDATION_STEPS}",
    "data.test_limit=12",
    "reference=false",
    "callbacks.progress_bar.refresh_rate=0",
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """Tiny CPU workloads: one thread is as fast and does not stall on a busy second core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``python train.py model=anogan debug=fast ...``: its directory, results and output."""
    root = tmp_path_factory.mktemp("anogan")
    paths = [f"paths.root_dir={root}", f"paths.cache_dir={cache_dir}"]
    # One thread, as tests/test_train_models.py: on a busy 2-core machine two threads of this
    # tiny run wait for each other at every small operation (measured 34 s instead of 2 s).
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train.py"), *TINY, *paths],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    (run_dir,) = (root / "outputs" / "train").iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    return {"dir": run_dir, "results": results, "log": completed.stdout + completed.stderr}


@pytest.fixture(scope="module")
def model(run: dict[str, Any]) -> Anogan:
    """The tested checkpoint of that run, rebuilt from the file alone (eval mode)."""
    loaded = load_model(run["results"]["checkpoint"]["path"])
    assert isinstance(loaded.model, Anogan)
    return loaded.model


# ------------------------------------------------------------------------ train.py
def test_train_py_trains_tests_and_writes_results(run: dict[str, Any]) -> None:
    results, run_dir = run["results"], run["dir"]
    assert results["status"] == "completed"
    assert results["config"]["model"] == "Anogan"
    assert results["config"]["model_name"] == "anogan"
    assert results["config"]["loss"]["w_con"] == 0 and results["config"]["loss"]["w_enc"] == 0
    metrics = results["categories"]["textile"]
    assert metrics["n_normal"] > 0 and metrics["n_anomalous"] > 0
    assert 0.0 <= metrics["auroc"] <= 1.0
    assert math.isfinite(results["threshold"]["value"])
    # The figures of the test: sample grid (input, G(z*), residual map), ROC, histogram.
    for relative in results["artifacts"]["textile"].values():
        assert (run_dir / relative).is_file(), relative
    # The DCGAN step logs like the core's, and validation ran the search (val/con).
    with (run_dir / "csv" / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for column in ("train/d", "train/g", "train/g_adv", "val/con", "val/threshold"):
        assert any(row.get(column) for row in rows), column


def test_test_recalibrates_with_the_full_search(run: dict[str, Any], model: Anogan) -> None:
    """Validation calibrated with the shorter search (the checkpoint says 2 steps); the test
    recalibrated on the validation normals with the test's 6 steps. results.json's threshold
    is exactly that recalibration, recomputed here from the checkpoint and the same data."""
    assert int(model.calibrated_steps) == VALIDATION_STEPS
    assert model.hparams.search_steps == SEARCH_STEPS
    assert f"with the test's {SEARCH_STEPS}-step search" in run["log"]
    cfg = OmegaConf.load(run["dir"] / ".hydra" / "config.yaml")
    cfg.data.cache_dir = str(Path(cfg.paths.cache_dir) / "images")
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    maps, latent = [], []
    with torch.inference_mode():
        for batch in datamodule.val_dataloader():
            output, latent_in, latent_out = model.reconstruct(batch["image"])
            maps.append(model.scorer.error_map(batch["image"], output.reconstruction))
            latent.append(model.latent_distance(latent_in, latent_out))
    provisional = float(model.threshold)
    model.scorer.calibrate(torch.cat(maps), torch.cat(latent), model.hparams.threshold_quantile)
    assert float(model.threshold) == pytest.approx(run["results"]["threshold"]["value"], rel=1e-5)
    assert float(model.threshold) != pytest.approx(provisional, rel=1e-5)


# --------------------------------------------------------------------------- search
@pytest.fixture(scope="module")
def lively() -> Anogan:
    """An untrained DCGAN (width 16, latent 16) whose BatchNorm statistics are the exact
    averages over a large random batch, so that in eval mode G(z) depends on z (a DCGAN-
    initialised generator with the initial statistics outputs almost zero for every z, where
    any search, right or wrong, looks the same). 30 search steps."""
    torch.manual_seed(0)
    model = Anogan(image_size=32, channels=3, base_width=16, latent_dim=16, search_steps=30)
    for layer in model.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.momentum = None  # cumulative average
            layer.reset_running_stats()
    with torch.no_grad():
        model.generator(model.sample_latent(64, torch.zeros(1)))
        model.discriminator(torch.rand(64, 3, 32, 32) * 2 - 1)
    return model.eval()


def _reachable_and_not(model: Anogan) -> torch.Tensor:
    """Three images the generator makes (from random codes) and three it cannot (noisy)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        made = model.generator(model.sample_latent(6, torch.zeros(1), generator))
    noise = torch.randn(3, 3, 32, 32, generator=generator)
    return torch.cat([made[:3], (made[3:] + 0.5 * noise).clamp(-1, 1)])


def test_search_finds_the_code_of_an_image_the_generator_makes(lively: Anogan) -> None:
    """Sec. 2.2: descending L(z) from z_1 brings G(z) to x when x is on the generator's
    manifold; an image off it (noise added) keeps a large loss and a higher score."""
    images = _reachable_and_not(lively)
    initial = lively.search(images, steps=0)
    found = lively.search(images, steps=100)
    assert (found.loss < initial.loss).all()
    assert (found.loss[:3] < 0.05 * initial.loss[:3]).all()  # measured: 259 -> 1.3
    residual = (images - found.reconstruction).abs().flatten(1).sum(1)
    residual_initial = (images - initial.reconstruction).abs().flatten(1).sum(1)
    assert (residual < residual_initial).all()
    assert found.loss[3:].min() > 10 * found.loss[:3].max()
    torch.testing.assert_close(found.initial_loss, initial.loss)  # L(z_1), before any step
    assert found.latent.abs().max() <= 1.0  # z stays in the support of U(-1, 1)
    with torch.no_grad():
        scores = lively(images)
    assert scores[3:].min() > scores[:3].max()


def test_score_is_the_papers_combination_at_the_final_z(lively: Anogan) -> None:
    """Schlegl Sec. 2.3: A(x) = 0.9 Σ|x − G(z*)| + 0.1 Σ|f(x) − f(G(z*))|; the score is A(x)
    over the C·H·W image elements, and the anomaly map the residual |x − G(z*)|."""
    images = _reachable_and_not(lively)
    with torch.no_grad():
        scores, output, maps = lively.score_with_map(images)
        found = lively.search(images)
        _, real_features = lively.discriminator(images)
        _, fake_features = lively.discriminator(found.reconstruction)
    residual = (images - found.reconstruction).abs()
    features = (real_features - fake_features).abs()
    paper = 0.9 * residual.flatten(1).sum(1) + 0.1 * features.flatten(1).sum(1)
    torch.testing.assert_close(found.loss, paper)
    torch.testing.assert_close(scores, paper / images[0].numel())
    torch.testing.assert_close(maps, residual.mean(dim=1, keepdim=True))
    torch.testing.assert_close(output.reconstruction, found.reconstruction)


def test_scores_do_not_depend_on_the_batch(lively: Anogan) -> None:
    """Alone, in a batch, shuffled, or beside very different batch-mates: the same score."""
    images = _reachable_and_not(lively)[1:5]
    outliers = torch.randn(3, 3, 32, 32).clamp(-1, 1)
    with torch.no_grad():
        scores = lively(images)
        alone = torch.cat([lively(images[i : i + 1]) for i in range(len(images))])
        order = torch.tensor([3, 0, 2, 1])
        shuffled = lively(images[order])
        mixed = lively(torch.cat([outliers, images[:1]]))[-1]
    torch.testing.assert_close(alone, scores, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(shuffled, scores[order], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mixed, scores[0], atol=1e-5, rtol=1e-4)


def test_same_score_alone_and_in_a_batch_after_the_papers_500_steps(lively: Anogan) -> None:
    """Over Γ = 500 Adam steps each z_i still follows its own image's gradient only."""
    images = _reachable_and_not(lively)[2:4]
    together = lively.search(images, steps=500)
    first = lively.search(images[:1], steps=500)
    second = lively.search(images[1:], steps=500)
    torch.testing.assert_close(
        torch.cat([first.loss, second.loss]), together.loss, rtol=1e-4, atol=1e-3
    )
    torch.testing.assert_close(
        torch.cat([first.latent, second.latent]), together.latent, rtol=1e-3, atol=1e-4
    )


def test_search_works_in_inference_mode_and_leaves_the_networks_alone(lively: Anogan) -> None:
    """Lightning's validation and test loops run under torch.inference_mode: the search
    leaves it for its own steps. No weight, BatchNorm statistic or .grad changes, even when
    the model is in training mode (the search runs the networks in eval mode)."""
    images = _reachable_and_not(lively)
    before = {name: value.clone() for name, value in lively.state_dict().items()}
    lively.train()
    try:
        with torch.inference_mode():
            inside = lively.search(images, steps=5)
        assert lively.generator.training and lively.discriminator.training  # mode restored
    finally:
        lively.eval()
    outside = lively.search(images, steps=5)
    torch.testing.assert_close(inside.loss, outside.loss)
    for name, value in lively.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, equal_nan=True)
    assert all(parameter.grad is None for parameter in lively.parameters())


# ------------------------------------------------------------------ predict, export
def test_predict_scores_files_with_the_search(run: dict[str, Any], cache_dir: Path, tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    test_root = cache_dir / "synthetic" / "textile" / "test"
    for kind in ("good", "scratch"):
        shutil.copy(sorted((test_root / kind).glob("*.png"))[0], folder / f"{kind}.png")
    checkpoint = run["results"]["checkpoint"]["path"]
    one = predict(checkpoint, folder, tmp_path / "one", batch_size=1, device="cpu", overlay=True)
    two = predict(checkpoint, folder, tmp_path / "two", batch_size=2, device="cpu", overlay=False)
    assert one.n_scored == 2 and one.n_errors == 0
    scores = [p.score for p in one.predictions]
    assert all(math.isfinite(score) for score in scores)
    assert scores == pytest.approx([p.score for p in two.predictions], rel=1e-4, abs=1e-6)
    assert all(p.overlay is not None and p.overlay.is_file() for p in one.predictions)


def test_export_is_refused_with_what_to_do_instead(run: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"cannot be exported to ONNX.*predict\.py"):
        export(run["results"]["checkpoint"]["path"], output=tmp_path / "anogan.onnx")
    assert not (tmp_path / "anogan.onnx").exists()


# ----------------------------------------------------------------------------- config
def _compose(overrides: list[str]) -> Any:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


def test_config_is_the_papers_setting() -> None:
    cfg = _compose(["model=anogan", "data.image_size=64"])
    assert cfg.model.search_steps == 500  # Γ, Sec. 2.2
    assert cfg.model.feature_weight == 0.1  # λ
    assert cfg.model.latent_dim == 100 and cfg.model.base_width == 64
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    assert isinstance(model, Anogan)
    assert model.loss_fn == DCGAN_LOSS == Anogan.default_loss
    assert model.scorer.to_config() == ANOGAN_SCORER == dict(Anogan.default_scorer)
    scorer_file = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model/scorer/anogan.yaml"))
    assert scorer_file.pop("_target_") == "anomaly_gan.scoring.AnomalyScore"
    assert scorer_file == ANOGAN_SCORER
    loss_file = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "loss/dcgan.yaml"))
    assert GeneratorLoss.from_config(loss_file) == DCGAN_LOSS


@pytest.mark.parametrize(("debug", "steps"), [("smoke", 3), ("fast", 5)])
def test_debug_configs_shorten_the_search_and_leave_other_models_alone(
    debug: str, steps: int
) -> None:
    assert _compose(["model=anogan", f"debug={debug}"]).model.search_steps == steps
    for other in ("ganomaly", "skip_sa_paper"):
        cfg = _compose([f"model={other}", f"debug={debug}"])
        assert "search_steps" not in cfg.model
        assert isinstance(hydra.utils.instantiate(cfg.model, _convert_="all"), GanAnomalyModule)


def test_settings_that_do_not_fit_a_dcgan_are_refused() -> None:
    with pytest.raises(ValueError, match=r"loss=dcgan"):
        Anogan(loss={"w_adv": 1.0, "w_con": 50.0, "w_enc": 0.0, "adversarial": "bce"})
    with pytest.raises(ValueError, match=r"loss\.w_ssim must be 0"):
        Anogan(loss={"w_con": 0.0, "w_enc": 0.0, "adversarial": "bce", "w_ssim": 1.0})
    with pytest.raises(ValueError, match=r"corruption"):
        Anogan(corruption={"probability": 0.5})
    with pytest.raises(ValueError, match=r"model\.search_steps"):
        Anogan(search_steps=-1)
    with pytest.raises(ValueError, match=r"model\.feature_weight"):
        Anogan(feature_weight=1.5)
