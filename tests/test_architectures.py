"""Every architecture on the shared core: shapes, sizes, attention maths, optimizer steps.

CPU only, real networks and a real ``lightning.Trainer``; no mocks.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader

from anomaly_gan.losses import GeneratorLoss
from anomaly_gan.models import Anogan, GanAnomalyModule
from anomaly_gan.models.registry import ARCHITECTURES
from anomaly_gan.nets import (
    ConvAutoencoder,
    DepthwiseSeparableConv2d,
    Pix2PixUnet,
    SelfAttention2d,
    SelfAttentionUnet,
)
from anomaly_gan.nets.dcgan import count_parameters
from anomaly_gan.resolvers import PAPER_ONLY_MODELS
from anomaly_gan.scoring import DEFAULT_SCORER
from tests.conftest import build_from_config

MODELS: dict[str, type[GanAnomalyModule]] = ARCHITECTURES
SIZES = (32, 64)
# Behaviour tests (optimizer steps, eval scores) use narrow networks: same layers and code
# paths as the defaults, a fraction of the CPU time.
NARROW = {"base_width": 16}

# (generator, discriminator) parameters at 3 channels. Pinned so that an accidental change of
# any layer fails here. The classes' defaults are the project's (model=<name>: width 64 at
# 32 px and 32 at 64 px, MIFE the deepest skip only, the U-Nets none, Skip-SA attention on
# levels 3-5):
PARAMETER_COUNTS: dict[tuple[str, int], tuple[int, int]] = {
    ("ganomaly", 32): (3_206_528, 663_296),
    ("ganomaly", 64): (3_300_544, 694_656),
    ("skip_ganomaly", 32): (13_903_491, 663_296),
    ("skip_ganomaly", 64): (13_966_147, 694_656),
    ("skip_sa", 32): (3_690_145, 663_296),
    ("skip_sa", 64): (2_319_009, 694_656),
    ("mife", 32): (32_531_177, 663_296),
    ("mife", 64): (8_497_065, 694_656),
    ("baseline", 32): (22_502_247, 663_296),
    ("baseline", 64): (5_989_351, 694_656),
    # AnoGAN, only in its paper's form: the DCGAN decoder and discriminator at width 64.
    ("anogan", 32): (1_068_928, 663_296),
    ("anogan", 64): (3_576_704, 2_765_568),
}
# The papers' networks, as model=<name>_paper builds them (width 64, every skip, Skip-SA
# attention on every level); the MIFE/Baseline difference is also derived from the paper's
# layer list in test_mife_adds_exactly_attention_and_skip_widths.
PAPER_PARAMETER_COUNTS: dict[tuple[str, int], tuple[int, int]] = {
    ("ganomaly", 32): (3_206_528, 663_296),
    ("ganomaly", 64): (10_729_856, 2_765_568),
    ("skip_ganomaly", 32): (16_659_075, 663_296),
    ("skip_ganomaly", 64): (29_244_035, 2_765_568),
    ("skip_sa", 32): (4_339_539, 663_296),
    ("skip_sa", 64): (4_339_539, 2_765_568),
    ("mife", 32): (35_286_761, 663_296),
    ("mife", 64): (35_904_233, 2_765_568),
    ("baseline", 32): (22_502_247, 663_296),
    ("baseline", 64): (23_119_719, 2_765_568),
}

# A size each model refuses, and sizes its refusal message must list.
REFUSED: dict[str, tuple[int, list[str]]] = {
    "ganomaly": (40, ["32", "48", "512"]),
    "skip_ganomaly": (48, ["32, 64, 128, 256, 512"]),
    "skip_sa": (48, ["32, 64, 96, 128"]),
    "mife": (48, ["32, 64, 96, 128"]),
    "baseline": (16, ["32, 64, 96, 128"]),
    "anogan": (40, ["32", "48", "512"]),
}
# Models with a model=<name>_paper config (AnoGAN has none: model=anogan is its paper's form).
WITH_PAPER_CONFIG = [name for name in MODELS if name not in PAPER_ONLY_MODELS]
# AnoGAN scores by a latent search of 500 Adam steps per image; these generic tests need its
# networks and scoring path, not the search's length (tests/test_anogan.py tests the search).
SHORT_SEARCH: dict[str, dict[str, Any]] = {"anogan": {"search_steps": 3}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """Small CPU workloads: one thread is as fast and does not stall when the second core
    is busy (two threads wait for each other at every one of the many small operations)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, image_size: int = 32, channels: int = 3, **kwargs: Any) -> GanAnomalyModule:
    """The class with its defaults, the project's (what ``model=<name>`` builds); AnoGAN
    with a 3-step search (:data:`SHORT_SEARCH`)."""
    torch.manual_seed(0)
    options = {**SHORT_SEARCH.get(name, {}), **kwargs}
    return MODELS[name](image_size=image_size, channels=channels, **options)


def build_paper(
    name: str, image_size: int = 32, channels: int = 3, **kwargs: Any
) -> GanAnomalyModule:
    """The paper's setting: what ``model=<name>_paper`` builds (read from its config)."""
    torch.manual_seed(0)
    return build_from_config(f"{name}_paper", image_size, channels, **kwargs)


# ------------------------------------------------------------------- shapes and sizes
@pytest.mark.parametrize("image_size", SIZES)
@pytest.mark.parametrize("name", list(MODELS))
def test_output_shapes_finite_and_parameter_counts(name: str, image_size: int) -> None:
    for channels in (3, 1):
        model = build(name, image_size, channels).eval()
        image = torch.rand(2, channels, image_size, image_size) * 2 - 1
        with torch.no_grad():
            output = model.generate(image)
            latent_in, latent_out = model.latent_pair(image, output)
            scores = model(image)
        assert output.reconstruction.shape == image.shape
        assert output.reconstruction.abs().max() <= 1.0  # Tanh output, like the inputs
        assert latent_in.shape == latent_out.shape
        assert latent_in.dim() == 2 and latent_in.shape[0] == 2
        assert scores.shape == (2,)
        for tensor in (output.reconstruction, latent_in, latent_out, scores):
            assert torch.isfinite(tensor).all()
        if channels == 3:
            assert _counts(model) == PARAMETER_COUNTS[(name, image_size)]


def _counts(model: GanAnomalyModule) -> tuple[int, int]:
    return count_parameters(model.generator), count_parameters(model.discriminator)


@pytest.mark.parametrize("image_size", SIZES)
@pytest.mark.parametrize("name", WITH_PAPER_CONFIG)
def test_paper_networks_keep_their_parameter_counts(name: str, image_size: int) -> None:
    assert _counts(build_paper(name, image_size)) == PAPER_PARAMETER_COUNTS[(name, image_size)]


@pytest.mark.parametrize("name", list(MODELS))
def test_unsupported_size_is_refused_with_the_sizes_that_work(name: str) -> None:
    size, listed = REFUSED[name]
    with pytest.raises(ValueError, match=r"data\.image_size") as error:
        build(name, size)
    message = str(error.value)
    assert f"Image size {size}" in message
    for sizes in listed:
        assert sizes in message


@pytest.mark.parametrize(
    ("network", "size"),
    [
        (lambda s: Pix2PixUnet(s, 3), 96),
        (lambda s: SelfAttentionUnet(s, 3, depth=5), 48),
        (lambda s: SelfAttentionUnet(s, 3, depth=3), 20),
        (lambda s: ConvAutoencoder(s, 3), 80),
    ],
)
def test_networks_validate_their_own_size(network: Any, size: int) -> None:
    with pytest.raises(ValueError, match=r"set data\.image_size"):
        network(size)


@pytest.mark.parametrize("name", list(MODELS))
def test_larger_sizes_work_for_every_model(name: str) -> None:
    """128 px runs (one grey image); 256 px is built only, to keep the suite fast.

    Skip-SA runs with its default attention levels 3-5, none at 128² and 64² positions: the
    attention maths is tested on its own below, and 16,384² attention takes seconds on CPU.
    """
    model = build(name, 128, 1).eval()
    image = torch.rand(1, 1, 128, 128) * 2 - 1
    with torch.no_grad():
        reconstruction = model.generate(image).reconstruction
        scores = model(image)
    assert reconstruction.shape == image.shape and torch.isfinite(scores).all()
    assert build(name, 256, 3).hparams.image_size == 256


def test_attention_levels_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match=r"model\.attention_levels"):
        build("skip_sa", attention_levels=[0, 2])
    with pytest.raises(ValueError, match=r"model\.attention_levels"):
        build("mife", attention_levels=[6])


def test_hparams_rebuild_the_same_model() -> None:
    """``load_from_checkpoint`` passes the saved hparams back to the class."""
    for name, cls in MODELS.items():
        model = build(name)
        clone = cls(**model.hparams)
        clone.load_state_dict(model.state_dict(), strict=True)
        assert clone.loss_fn == model.loss_fn
        assert clone.scorer.to_config() == model.scorer.to_config()


# -------------------------------------------------------------------- architecture facts
@pytest.mark.parametrize("name", WITH_PAPER_CONFIG)
def test_default_loss_and_score_are_the_configs(name: str) -> None:
    """Without a ``loss`` or ``scorer`` every class trains ``GeneratorLoss()``: feature matching
    + L1, 1 / 50 / 1 (conf/loss/feature_matching_l1), Skip-GANomaly with its D-feature term
    once (w_adv 0, conf/loss/feature_matching_once_l1), and scores with the difference map
    (conf/model/scorer/difference_map), as every ``model=<name>`` config; the papers' losses
    and scores are ``model=<name>_paper`` (tests/test_config.py compares every hparam).
    AnoGAN, only in its paper's form, trains and scores as its paper: tests/test_anogan.py."""
    model = build(name)
    w_adv = 0.0 if name == "skip_ganomaly" else 1.0
    assert model.loss_fn == GeneratorLoss(w_adv, 50.0, 1.0, "l1", "feature_matching", "l2")
    assert model.scorer.to_config() == dict(DEFAULT_SCORER)


@pytest.mark.parametrize("image_size", [32, 64, 128])
def test_skip_ganomaly_unet_depth_is_log2_of_the_size(image_size: int) -> None:
    net = Pix2PixUnet(image_size, 3)
    assert len(net.down) == int(math.log2(image_size))
    innermost = torch.zeros(1, 3, image_size, image_size)
    for down in net.down:
        innermost = down(innermost)
    assert innermost.shape[-2:] == (1, 1)


def test_skip_ganomaly_latent_comes_from_discriminator_features() -> None:
    model = build("skip_ganomaly").eval()
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        output = model.generate(image)
        latent_in, latent_out = model.latent_pair(image, output)
        _, real_features = model.discriminator(image)
        _, fake_features = model.discriminator(output.reconstruction)
    assert output.latent_in is None and output.latent_out is None
    torch.testing.assert_close(latent_in, real_features.flatten(1))
    torch.testing.assert_close(latent_out, fake_features.flatten(1))


def test_skip_sa_levels_have_two_dscs_attention_and_pooling() -> None:
    net = SelfAttentionUnet(64, 3)  # paper default: attention on every level
    assert len(net.encoder) == 5
    assert all(isinstance(module, SelfAttention2d) for module in net.attention)
    for level in net.encoder:
        assert sum(isinstance(m, DepthwiseSeparableConv2d) for m in level.modules()) == 2
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in net.modules())  # bilinear up
    chosen = SelfAttentionUnet(64, 3, attention_levels=[2, 3])
    kinds = [isinstance(module, SelfAttention2d) for module in chosen.attention]
    assert kinds == [False, True, True, False, False]


def test_dsc_has_depthwise_and_pointwise_weights_only() -> None:
    dsc = DepthwiseSeparableConv2d(64, 128)
    assert count_parameters(dsc) == 64 * 3 * 3 + 64 * 128
    assert dsc(torch.randn(1, 64, 9, 7)).shape == (1, 128, 9, 7)


def _attention_parameters(channels: int) -> int:
    inner = channels // 8
    return 2 * (channels * inner + inner) + channels * channels + channels + 1


def test_mife_adds_exactly_attention_and_skip_widths() -> None:
    """MIFE = Baseline + SelfAttention after blocks 4, 5 + doubled decoder inputs (II.C)."""
    mife, baseline = build_paper("mife"), build_paper("baseline")
    encoder_widths = [64, 128, 256, 512, 1024]
    decoder_outputs = [512, 256, 128, 64, 3]
    extra_skip_weights = sum(  # each ConvTranspose2d(4, 2, 1) sees `width` more inputs
        width * out * 16 for width, out in zip(encoder_widths[::-1], decoder_outputs, strict=True)
    )
    expected = _attention_parameters(512) + _attention_parameters(1024) + extra_skip_weights
    assert count_parameters(mife.generator) - count_parameters(baseline.generator) == expected
    assert [step[0].in_channels for step in mife.generator.decoder.steps] == [
        2048,
        1024,
        512,
        256,
        128,
    ]
    assert [step[0].in_channels for step in baseline.generator.decoder.steps] == [
        1024,
        512,
        256,
        128,
        64,
    ]


def _decoder_input_widths(model: GanAnomalyModule) -> list[int]:
    """Input channels of each decoder level's first layer, deepest level first."""
    net = model.generator
    if isinstance(net, Pix2PixUnet):
        return [level[1].in_channels for level in reversed(net.up)]
    if isinstance(net, SelfAttentionUnet):
        return [level[0][0].depthwise.in_channels for level in net.decoder]
    return [step[0].in_channels for step in net.decoder.steps]


def _levels_with_skips(model: GanAnomalyModule, name: str) -> list[bool]:
    """Per decoder level (deepest first): is its input wider than without any skip?"""
    none = build(name, base_width=model.hparams.base_width, skip_levels=[])
    return [
        a > b
        for a, b in zip(_decoder_input_widths(model), _decoder_input_widths(none), strict=True)
    ]


@pytest.mark.parametrize("name", ["skip_ganomaly", "skip_sa", "mife"])
def test_every_skip_in_the_papers_and_few_by_default(name: str) -> None:
    paper = _levels_with_skips(build_paper(name), name)
    depth = len(paper)
    # every decoder level takes a skip, except pix2pix's innermost one (it has none)
    assert sum(paper) == (depth - 1 if name == "skip_ganomaly" else depth)
    # the default (model=<name>): MIFE keeps only the deepest level's skip (skip_levels
    # [-1]); the U-Nets none (skip_levels [], chosen on four real sets)
    expected = [name == "mife" and level == 0 for level in range(depth)]
    assert _levels_with_skips(build(name), name) == expected


@pytest.mark.parametrize("name", ["skip_ganomaly", "skip_sa", "mife"])
def test_skip_levels_keep_only_the_chosen_skips(name: str) -> None:
    """Dropping a level's skip removes exactly that level's encoder width from its decoder
    input, leaves the other levels alone, and the network still maps image -> image."""
    full = build(name, skip_levels=None)
    deep_only = build(name, skip_levels=[4])
    none = build(name, skip_levels=[])
    widths_full = _decoder_input_widths(full)
    widths_deep = _decoder_input_widths(deep_only)
    widths_none = _decoder_input_widths(none)
    changed = [i for i, (a, b) in enumerate(zip(widths_full, widths_deep, strict=True)) if a != b]
    kept = [i for i, (a, b) in enumerate(zip(widths_deep, widths_none, strict=True)) if a != b]
    assert len(kept) == 1 and kept[0] not in changed  # level 4 alone still concatenates
    assert all(widths_none[i] < widths_full[i] for i in changed)
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    for model in (deep_only, none):
        with torch.no_grad():
            assert model.eval().generate(image).reconstruction.shape == image.shape


def test_without_skips_a_local_change_spreads_through_the_bottleneck_only() -> None:
    """With every skip the U-Net's output near a changed pixel tracks the change (the copy
    path that hides defects); with none the change must pass the 1×1 bottleneck."""
    torch.manual_seed(0)
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    patched = image.clone()
    patched[..., 12:16, 12:16] = 1.0
    for skip_levels, copies in ((None, True), ([], False)):
        net = Pix2PixUnet(32, 3, 16, skip_levels=skip_levels).eval()
        with torch.no_grad():
            change = (net(patched) - net(image)).abs()[..., 12:16, 12:16].mean()
            elsewhere = (net(patched) - net(image)).abs()[..., 24:, 24:].mean()
        assert (change > 10 * elsewhere) == copies  # measured: ~1400x with skips, ~3x without


def test_negative_levels_count_from_the_deepest() -> None:
    """-1 is the deepest level with a skip at every size: 2×2 for pix2pix (level 5 at 64 px,
    6 at 128 px), level 5 for the fixed-depth nets."""
    assert Pix2PixUnet(64, 3, 8, skip_levels=[-1]).skip_levels == (5,)
    assert Pix2PixUnet(128, 3, 8, skip_levels=[-1]).skip_levels == (6,)
    assert Pix2PixUnet(64, 3, 8, skip_levels=[-2, 1]).skip_levels == (1, 4)
    assert SelfAttentionUnet(64, 3, 5, 8, skip_levels=[-1]).skip_levels == (5,)
    assert SelfAttentionUnet(64, 3, 5, 8, attention_levels=[-2, -1]).attention_levels == (4, 5)
    with pytest.raises(ValueError, match=r"-1 \(the deepest\) to -5"):
        Pix2PixUnet(64, 3, 8, skip_levels=[-6])


def test_skip_levels_out_of_range_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"model.skip_levels=\[6\].*1 .*to 5"):
        Pix2PixUnet(64, 3, skip_levels=[6])  # depth 6: the innermost level has no skip
    with pytest.raises(ValueError, match=r"model\.skip_levels"):
        build("mife", skip_levels=[0])


@pytest.mark.parametrize("image_size", [32, 64])
def test_mife_encoder_matches_the_paper_layers(image_size: int) -> None:
    encoder = build_paper("baseline", image_size).generator.encoder
    convs = [block[0] for block in encoder.blocks]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (3, 64),
        (64, 128),
        (128, 256),
        (256, 512),
        (512, 1024),
    ]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs)
    assert encoder.to_latent.in_features == 1024 * (image_size // 32) ** 2
    assert encoder.to_latent.out_features == 100


def test_mife_encoder_loss_reuses_the_generator_encoder() -> None:
    model = build("mife").eval()
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        output = model.generate(image)
        torch.testing.assert_close(output.latent_in, model.generator.encode(image))
        torch.testing.assert_close(output.latent_out, model.generator.encode(output.reconstruction))


# --------------------------------------------------------------------- self-attention
def reference_attention(module: SelfAttention2d, x: Tensor) -> Tensor:
    """Zhang et al. 2018 written out: explicit N×N softmax(q^T k), then v · attention^T."""
    batch, channels, height, width = x.shape
    query = module.query(x).flatten(2)  # (B, C/8, N)
    key = module.key(x).flatten(2)
    value = module.value(x).flatten(2)  # (B, C, N)
    attention = torch.softmax(query.transpose(1, 2) @ key, dim=-1)  # (B, N, N), rows = queries
    out = (value @ attention.transpose(1, 2)).view(batch, channels, height, width)
    return module.gamma * out + x


@pytest.mark.parametrize(("channels", "height", "width"), [(64, 8, 8), (32, 5, 7), (4, 6, 6)])
def test_self_attention_matches_the_plain_reference(channels: int, height: int, width: int) -> None:
    torch.manual_seed(0)
    module = SelfAttention2d(channels)
    with torch.no_grad():
        module.gamma.fill_(0.7)
    x = torch.randn(3, channels, height, width)
    torch.testing.assert_close(module(x), reference_attention(module, x), atol=1e-5, rtol=0)


def test_self_attention_starts_as_identity() -> None:
    module = SelfAttention2d(16)
    x = torch.randn(2, 16, 4, 4)
    assert module.gamma.item() == 0.0
    torch.testing.assert_close(module(x), x)


def test_self_attention_runs_on_the_fused_cpu_kernel() -> None:
    """Restricted to the flash backend, forward and backward still run: no N×N matrix."""
    module = SelfAttention2d(64)
    x = torch.randn(2, 64, 16, 16, requires_grad=True)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        module(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("channels", [64, 128])
def test_unpadded_attention_equals_the_padded(channels: int) -> None:
    """The CUDA path (query/key at C/8, value at C: the memory-efficient kernel) computes what
    the padded path (the CPU flash kernel's one head size) does; on CPU the unpadded call
    runs on the math backend, forward and backward."""
    torch.manual_seed(0)
    module = SelfAttention2d(channels)
    with torch.no_grad():
        module.gamma.fill_(0.7)
    x = torch.randn(2, channels, 8, 8, requires_grad=True)
    results = {}
    for pad in (True, False):
        module.pad_query_key = pad
        output = module(x)
        (grad,) = torch.autograd.grad(output.square().sum(), x)
        results[pad] = (output.detach(), grad)
    torch.testing.assert_close(results[False][0], results[True][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[False][1], results[True][1], atol=1e-4, rtol=1e-4)
    # The default chooses per device: padded on CPU (and in any export), unpadded only on CUDA.
    module.pad_query_key = None
    assert module.pads_query_key(x)
    assert SelfAttention2d(32).pads_query_key(torch.zeros(1, 32, 4, 4))


# ----------------------------------------------------------------- one training step
class _StepRecorder(L.Callback):
    """Snapshots every parameter around each optimizer step (torch step hooks)."""

    def __init__(self) -> None:
        self.changed: dict[str, tuple[set[str], set[str]]] = {}
        self.had_grad: dict[str, set[str]] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: GanAnomalyModule) -> None:
        named = dict(pl_module.named_parameters())
        d_ids = {id(p) for p in pl_module.discriminator.parameters()}
        for optimizer in trainer.optimizers:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            role = "d" if all(id(p) in d_ids for p in params) else "g"
            before: dict[str, Tensor] = {}

            def pre(
                _opt: Any, _args: Any, _kwargs: Any, before: dict = before, role: str = role
            ) -> None:
                before.update({n: p.detach().clone() for n, p in named.items()})
                self.had_grad[role] = {
                    n for n, p in named.items() if p.grad is not None and p.grad.abs().sum() > 0
                }

            def post(
                _opt: Any, _args: Any, _kwargs: Any, before: dict = before, role: str = role
            ) -> None:
                changed = {n for n, p in named.items() if not torch.equal(p, before[n])}
                generator = {n for n in changed if n.startswith("generator.")}
                discriminator = {n for n in changed if n.startswith("discriminator.")}
                self.changed[role] = (generator, discriminator)

            optimizer.register_step_pre_hook(pre)
            optimizer.register_step_post_hook(post)


@pytest.mark.parametrize("name", list(MODELS))
def test_training_step_updates_only_the_stepped_network(name: str) -> None:
    model = build(name, **NARROW)
    images = [{"image": torch.rand(3, 32, 32) * 2 - 1} for _ in range(4)]
    recorder = _StepRecorder()
    trainer = L.Trainer(
        accelerator="cpu",
        fast_dev_run=1,
        callbacks=[recorder],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train_dataloaders=DataLoader(images, batch_size=4))

    g_params = {n for n, _ in model.named_parameters() if n.startswith("generator.")}
    d_params = {n for n, _ in model.named_parameters() if n.startswith("discriminator.")}
    g_changed, d_changed = recorder.changed["d"]
    assert g_changed == set()
    assert d_changed == d_params  # every discriminator parameter moved
    g_changed, d_changed = recorder.changed["g"]
    assert d_changed == set()
    # Every generator parameter with a gradient moved; the only ones without are the
    # attention projections, whose output is multiplied by gamma = 0 at the first step.
    assert g_changed == recorder.had_grad["g"] & g_params
    unmoved = g_params - g_changed
    assert all(n.rsplit(".", 2)[-2] in ("query", "key", "value") for n in unmoved), unmoved


# --------------------------------------------------------------------- eval-mode scores
@pytest.mark.parametrize("name", list(MODELS))
def test_eval_scores_are_deterministic_and_batch_independent(name: str) -> None:
    model = build(name, **NARROW)
    torch.manual_seed(1)
    with torch.no_grad():  # move BatchNorm running statistics away from their initial values
        if isinstance(model, Anogan):  # its generate() is the eval-mode latent search
            model.generator(torch.rand(8, model.hparams.latent_dim, 1, 1) * 2 - 1)
            model.discriminator(torch.rand(8, 3, 32, 32) * 2 - 1)
        else:
            model.generate(torch.rand(8, 3, 32, 32) * 2 - 1)
    model.eval()
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    outliers = torch.randn(3, 3, 32, 32) * 3  # very different batch-mates
    with torch.no_grad():
        scores = model(images)
        torch.testing.assert_close(model(images), scores, atol=0, rtol=0)
        alone = torch.cat([model(images[i : i + 1]) for i in range(4)])
        permutation = torch.tensor([3, 0, 2, 1])
        shuffled = model(images[permutation])
        mixed = model(torch.cat([outliers, images[:1]]))[-1]
    torch.testing.assert_close(alone, scores, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(shuffled, scores[permutation], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mixed, scores[0], atol=1e-5, rtol=1e-4)
