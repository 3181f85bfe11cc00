"""Networks: parameter counts against the paper's tables, shapes, input checks, training, bundle I/O."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, verify_net_in_out

from mrivol_monai import losses
from mrivol_monai.errors import InputError
from mrivol_monai.networks import (
    NETWORKS,
    PAPER_DEFAULTS,
    FCN2d,
    SegNet2d,
    UNet2d,
    build,
    count_parameters,
)

CONFIGS = Path(__file__).parent / "configs"
FAMILIES = {"unet": UNet2d, "segnet": SegNet2d, "fcn": FCN2d}

# paper table 2 (UNet, rows 5..7) and table 3 (FCN, rows 2..7), width 64, 1 -> 2 channels
PAPER_UNET = {5: 17.3e6, 6: 69.2e6, 7: 276.8e6}
PAPER_FCN = {2: 99.3e3, 3: 501.2e3, 4: 2.1e6, 5: 8.5e6, 6: 34.2e6, 7: 137e6}
# our exact counts (module docstrings), including UNet rows 2..4 where the paper fits no design
EXACT_UNET = {2: 222_658, 3: 1_034_818, 4: 4_281_154, 5: 17_261_890, 6: 69_175_618, 7: 276_812_098}
EXACT_FCN = {2: 99_330, 3: 501_186, 4: 2_107_714, 5: 8_532_034, 6: 34_225_730, 7: 136_993_346}
SEGNET_PAPER_SIZE = 7_857_730


def meta_count(cls: type, **kwargs: object) -> int:
    """Parameter count without allocating weights."""
    with torch.device("meta"):
        return count_parameters(cls(**kwargs))


@pytest.mark.parametrize("ed_blocks", sorted(EXACT_UNET))
def test_unet_parameter_count(ed_blocks: int) -> None:
    n = meta_count(UNet2d, in_channels=1, out_channels=2, ed_blocks=ed_blocks, width=64)
    assert n == EXACT_UNET[ed_blocks]
    if ed_blocks in PAPER_UNET:
        assert abs(n - PAPER_UNET[ed_blocks]) / PAPER_UNET[ed_blocks] < 0.01


@pytest.mark.parametrize("ed_blocks", sorted(EXACT_FCN))
def test_fcn_parameter_count_matches_table3(ed_blocks: int) -> None:
    n = meta_count(FCN2d, in_channels=1, out_channels=2, ed_blocks=ed_blocks, width=64)
    assert n == EXACT_FCN[ed_blocks]
    assert abs(n - PAPER_FCN[ed_blocks]) / PAPER_FCN[ed_blocks] < 0.01


def test_segnet_parameter_count() -> None:
    assert meta_count(SegNet2d, in_channels=1, out_channels=2, width=64) == SEGNET_PAPER_SIZE
    # 10 convolutions with BatchNorm (5 encoder, 5 decoder) + the 1x1 head
    convs = [m for m in SegNet2d().modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 11
    assert [c.out_channels for c in convs[:10]] == [64, 128, 256, 512, 512, 512, 256, 128, 64, 64]


def test_paper_size_unets_counted_on_real_modules() -> None:
    """The meta-device count is the real one (builds 17M + 69M + 277M parameters for real)."""
    for ed_blocks in (5, 6, 7):
        assert count_parameters(UNet2d(ed_blocks=ed_blocks)) == EXACT_UNET[ed_blocks]


def unet_count_by_hand(ed_blocks: int, width: int, in_channels: int = 1, out_channels: int = 2) -> int:
    """Closed-form count of the bilinear UNet: bias-free 3x3 convs + BatchNorm (2 per channel)."""
    chans = [width * 2**k for k in range(ed_blocks)]

    def double(c_in: int, c_out: int, mid: int) -> int:
        return 9 * c_in * mid + 2 * mid + 9 * mid * c_out + 2 * c_out

    n = double(in_channels, chans[0], chans[0])
    for k in range(1, ed_blocks):
        out = chans[k] if k < ed_blocks - 1 else chans[k] // 2
        n += double(chans[k - 1], out, out)
    for k in range(ed_blocks - 1):
        n += double(chans[k + 1], chans[k] // 2 if k else chans[0], chans[k])
    return n + chans[0] * out_channels + out_channels


@pytest.mark.parametrize("width", [16, 32, 64])
def test_unet_count_matches_closed_form(width: int) -> None:
    for ed_blocks in range(2, 8):
        assert meta_count(UNet2d, ed_blocks=ed_blocks, width=width) == unet_count_by_hand(ed_blocks, width)
    # each extra output class adds one 1x1 head filter: width weights + 1 bias
    assert meta_count(UNet2d, out_channels=5, width=width) - meta_count(UNet2d, width=width) == 3 * (width + 1)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("ed_blocks", [2, 3, 4, 5, 6, 7])
def test_output_shape_every_depth(family: str, ed_blocks: int) -> None:
    torch.manual_seed(0)
    net = build(family, in_channels=1, out_channels=3, ed_blocks=ed_blocks, width=4).eval()
    d = 2 ** (ed_blocks - 1)
    x = torch.randn(2, 1, 2 * d, 3 * d)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 3, 2 * d, 3 * d)
    assert torch.isfinite(y).all()
    # logits, not probabilities: the 1x1 head is the last layer, so its bias shifts the output exactly
    with torch.no_grad():
        net.head.conv.bias += 5.0
        assert torch.allclose(net(x) - y, torch.full_like(y, 5.0), atol=1e-4)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_indivisible_input_is_a_clear_error(family: str) -> None:
    net = build(family, ed_blocks=4, width=4)
    with pytest.raises(InputError, match=r"divisible by 8, got 36x32"):
        net(torch.zeros(1, 1, 36, 32))
    with pytest.raises(InputError, match=r"expected input \(N, 1, H, W\)"):
        net(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("bad", [{"ed_blocks": 1}, {"width": 0}, {"out_channels": 0}])
def test_bad_arguments(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        UNet2d(**bad)


def test_fcn_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    net = FCN2d(ed_blocks=3, width=4, dropout=0.5)
    x = torch.randn(1, 1, 16, 16)
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))
    drops = [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops == [0.5] * 3  # bottleneck + 2 transposed convs


def test_build_is_case_insensitive_and_rejects_unknown_names() -> None:
    assert isinstance(build("UNet", width=4), UNet2d)
    assert isinstance(build(" SegNet ", width=4), SegNet2d)
    with pytest.raises(ValueError, match="unknown network 'resnet'; known networks: fcn, segnet, unet, unet3d"):
        build("resnet")


def test_unet3d_reference() -> None:
    net = build("unet3d", in_channels=1, out_channels=2).eval()
    with torch.no_grad():
        y = net(torch.zeros(1, 1, 16, 32, 32))
    assert y.shape == (1, 2, 16, 32, 32)
    strided = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d) and m.stride == (2, 2, 2)]
    assert [m.out_channels for m in strided] == [16, 32, 64, 128]
    assert max(m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv3d)) == 256


def _square_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 32x32 images with a bright square on noise, and one-hot (background, square) targets."""
    g = torch.Generator().manual_seed(3)
    target = torch.zeros(2, 2, 32, 32)
    target[0, 1, 6:20, 8:24] = 1
    target[1, 1, 12:28, 4:18] = 1
    target[:, 0] = 1 - target[:, 1]
    image = target[:, 1:] + 0.3 * torch.randn(2, 1, 32, 32, generator=g)
    return image, target


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from threads, and spinning threads crawl when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_overfits_tiny_batch_with_paper_loss(family: str, one_thread: None) -> None:
    torch.manual_seed(0)
    defaults = PAPER_DEFAULTS[family]
    extra = {"dropout": 0.0} if family == "fcn" else {}
    net = build(family, ed_blocks=3, width=8, **extra)
    loss_fn = losses.build(defaults["loss"])
    # the paper's optimiser family; a larger lr than the paper's so 30 steps suffice
    opt = getattr(torch.optim, defaults["optimizer"])(net.parameters(), lr=1e-2)
    image, target = _square_batch()
    net.train()
    history = []
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(net(image), target)
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < 0.5 * history[0]
    net.eval()
    with torch.no_grad():
        pred = net(image).argmax(1)
    accuracy = (pred == target[:, 1].long()).float().mean().item()
    assert accuracy > 0.9


BUNDLE_CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"


def _bundle_parser(*overlays: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLE_CONFIGS / "train.json")] + [str(BUNDLE_CONFIGS / o) for o in overlays])
    parser["bundle_root"] = str(BUNDLE_CONFIGS.parent)
    return parser


@pytest.mark.parametrize("family, overlays", [("unet", ()), ("segnet", ("experiments/model_segnet.json",)),
                                              ("fcn", ("experiments/model_fcn.json",))])
def test_paper_defaults_are_what_the_bundle_overlays_train_with(family: str, overlays: tuple[str, ...]) -> None:
    assert {k: (v["loss"], v["optimizer"], v["lr"]) for k, v in PAPER_DEFAULTS.items()} == {
        "unet": ("bce_dice", "Adam", 1e-3),
        "segnet": ("focal", "Adam", 1e-3),
        "fcn": ("bce", "RMSprop", 1e-4),
    }
    parser = _bundle_parser(*overlays)
    defaults = PAPER_DEFAULTS[family]
    assert parser["network_def"]["_target_"] == f"mrivol_monai.networks.{type(build(family)).__name__}"
    assert parser["loss_name"] == defaults["loss"]
    assert parser["optimizer"]["_target_"] == f"torch.optim.{defaults['optimizer']}"
    if family == "fcn":  # the other two keep train.json's larger lr, tuned for short CPU runs
        assert parser["learning_rate"] == defaults["lr"]


def test_bundle_scheduler_lowers_lr_when_dice_stalls() -> None:
    parser = _bundle_parser()
    opt, sched = parser.get_parsed_content("optimizer"), parser.get_parsed_content("lr_scheduler")
    lr = parser["learning_rate"]
    for dice in (0.5, 0.6, 0.6, 0.6):  # best 0.6 then two epochs without improvement: still patient
        sched.step(dice)
    assert opt.param_groups[0]["lr"] == pytest.approx(lr)
    sched.step(0.59)
    assert opt.param_groups[0]["lr"] == pytest.approx(lr / 2)


def _verify(net_id: str, *override: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "monai.bundle", "verify_net_in_out", net_id,
        "--meta_file", str(CONFIGS / "verify_net_metadata.json"),
        "--config_file", str(CONFIGS / "verify_net.json"),
        "--device", "cpu",
        *override,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a 64x64 forward needs no thread pool
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("net_id", "override"),
    [
        ("network_def", ()),
        ("network_def", ("--network_def#_target_", "mrivol_monai.networks.FCN2d")),
        ("network_by_name", ()),  # SegNet through the registry
    ],
)
def test_bundle_verify_net_in_out(net_id: str, override: tuple) -> None:
    result = _verify(net_id, *override)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "data shape of network is verified with no error" in result.stdout + result.stderr


def test_bundle_verify_net_in_out_catches_wrong_channels() -> None:
    """The check has teeth: the same config with 3 output channels fails (in-process, same code as the CLI)."""
    with pytest.raises(ValueError, match="output channel number `3` doesn't match: `2`"):
        verify_net_in_out(
            "network_def",
            meta_file=str(CONFIGS / "verify_net_metadata.json"),
            config_file=str(CONFIGS / "verify_net.json"),
            device="cpu",
            **{"network_def#out_channels": 3},
        )


@pytest.mark.parametrize("family", ["unet", "segnet"])
def test_fold_batch_norm_keeps_outputs_and_leaves_no_batchnorm(family):
    from mrivol_monai.networks import fold_batch_norm

    torch.manual_seed(0)
    net = build(family, in_channels=1, out_channels=3, ed_blocks=3, width=4)
    for m in net.modules():  # running statistics far from the identity, so folding has work to do
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.2, 3.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    net.train()
    x = torch.randn(3, 1, 16, 16)

    folded = fold_batch_norm(net)

    assert net.training and not folded.training  # the original is untouched, the copy is for inference
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) > 0
    with torch.no_grad():
        expected = net.eval()(x)
        assert torch.allclose(folded(x), expected, atol=1e-5)
        assert not torch.allclose(expected, torch.zeros_like(expected))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_torch_jit_script_matches_eager_and_survives_save_load(family, tmp_path):
    # the Model Zoo exports TorchScript by scripting (monai.bundle ckpt_export), not by tracing
    torch.manual_seed(0)
    net = build(family, in_channels=1, out_channels=3, ed_blocks=3, width=4).eval()
    scripted = torch.jit.script(net)
    torch.jit.save(scripted, str(tmp_path / "net.ts"))
    loaded = torch.jit.load(str(tmp_path / "net.ts"))
    x = torch.randn(2, 1, 16, 24)  # not square: H and W must not be swapped anywhere
    with torch.no_grad():
        expected = net(x)
        assert expected.shape == (2, 3, 16, 24)
        assert torch.allclose(scripted(x), expected, atol=1e-6)
        assert torch.allclose(loaded(x), expected, atol=1e-6)
    # the input check is compiled in too (as a TorchScript error carrying the same message)
    with pytest.raises(Exception, match=r"divisible by 4, got 18x24"):
        loaded(torch.zeros(1, 1, 18, 24))
