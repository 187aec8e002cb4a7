"""The networks network2d.py trains, built from a checkpoint's `model_config`:

    {"arch": "unet", "in_channels": 3, "classes": 4, "width": 16, "depth": 4}                  (the default)
    {"arch": "deeplabv3plus", "in_channels": 3, "classes": 4, "backbone": "resnet50", "output_stride": 16}

DeepLabV3+ (Chen et al. 2018) is written here on a ResNet-50 / 101 backbone: segmentation-models-pytorch and timm
need torchvision, whose PyPI build does not import beside this project's torch. The backbone's modules carry
torchvision's ResNet names (conv1, bn1, layer1.0.conv1, layer1.0.downsample.0, ...; Bottleneck with the stride on
the 3x3 convolution, "ResNet v1.5"), so an ImageNet state dict saved from torchvision.models.resnet50() elsewhere
loads with `load_encoder_weights` (strict: only its classifier fc.* is left out). Output stride 16 dilates
layer4 (ASPP rates 6, 12, 18), 8 dilates layer3 and layer4 (rates 12, 24, 36), as in the paper.

Every model has `config` (what rebuilds it) and `pad_to` (inputs are padded to a multiple of it for whole-image
inference).
"""

from __future__ import annotations

import io

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from mllib import MllibError, UsageError
from mllib.training.unet import UNet

ARCHS = ("unet", "deeplabv3plus")
BACKBONES = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + idt)


class ResNet(nn.Module):
    """torchvision's ResNet (Bottleneck) without its classifier; forward returns (layer1, layer4) features."""

    def __init__(self, layers=(3, 4, 6, 3), in_channels: int = 3, dilate=(False, False, False)):
        super().__init__()
        self.inplanes, self.dilation = 64, 1
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._layer(64, layers[0])
        self.layer2 = self._layer(128, layers[1], 2, dilate[0])
        self.layer3 = self._layer(256, layers[2], 2, dilate[1])
        self.layer4 = self._layer(512, layers[3], 2, dilate[2])
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        previous = self.dilation
        if dilate:  # as torchvision's replace_stride_with_dilation
            self.dilation *= stride
            stride = 1
        down = None
        if stride != 1 or self.inplanes != planes * 4:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                 nn.BatchNorm2d(planes * 4))
        out = [Bottleneck(self.inplanes, planes, stride, previous, down)]
        self.inplanes = planes * 4
        out += [Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*out)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        return low, self.layer4(self.layer3(self.layer2(low)))


def _cbr(cin: int, cout: int, k: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    def __init__(self, cin: int, rates, cout: int = 256):
        super().__init__()
        self.branches = nn.ModuleList([_cbr(cin, cout)] + [_cbr(cin, cout, 3, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU(inplace=True))
        self.project = nn.Sequential(_cbr(cout * (len(rates) + 2), cout), nn.Dropout(0.1))

    def forward(self, x):
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], 1))


class DeepLabV3Plus(nn.Module):
    def __init__(self, in_channels: int = 3, classes: int = 4, backbone: str = "resnet50", output_stride: int = 16):
        super().__init__()
        if backbone not in BACKBONES:
            raise UsageError(f"--backbone must be one of {', '.join(BACKBONES)} (got {backbone!r})")
        if output_stride not in (8, 16):
            raise UsageError(f"--output_stride must be 8 or 16 (got {output_stride})")
        self.config = {"arch": "deeplabv3plus", "in_channels": in_channels, "classes": classes,
                       "backbone": backbone, "output_stride": output_stride}
        self.pad_to = 32
        dilate = (False, False, True) if output_stride == 16 else (False, True, True)
        self.backbone = ResNet(BACKBONES[backbone], in_channels, dilate)
        self.aspp = ASPP(2048, (6, 12, 18) if output_stride == 16 else (12, 24, 36))
        self.low = _cbr(256, 48)
        self.decoder = nn.Sequential(_cbr(256 + 48, 256, 3), _cbr(256, 256, 3))
        self.head = nn.Conv2d(256, classes, 1)

    def forward(self, x):
        size = x.shape[-2:]
        low, high = self.backbone(x)
        high = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        out = self.head(self.decoder(torch.cat([high, self.low(low)], 1)))
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


def build(config: dict) -> nn.Module:
    """The model a `model_config` describes (a checkpoint without "arch" is a UNet: older runs)."""
    c = dict(config)
    arch = c.pop("arch", "unet")
    if arch == "unet":
        return UNet(c["in_channels"], c["classes"], width=c.get("width", 16), depth=c.get("depth", 4))
    if arch == "deeplabv3plus":
        return DeepLabV3Plus(c["in_channels"], c["classes"], c.get("backbone", "resnet50"), c.get("output_stride", 16))
    raise MllibError(f"unknown architecture {arch!r} (known: {', '.join(ARCHS)})")


def load_encoder_weights(model: nn.Module, path: str) -> None:
    """A torchvision-named ResNet state dict (e.g. ImageNet weights) into a DeepLabV3+'s backbone: every backbone
    tensor must be in the file with its shape, and the file may hold nothing else but the classifier fc.*; anything
    else is one MllibError saying what differs."""
    if not isinstance(model, DeepLabV3Plus):
        raise UsageError("--encoder_weights needs --arch deeplabv3plus (the UNet has no pretrained encoder)")
    try:
        with open(path, "rb") as f:
            state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    except OSError as e:
        raise MllibError(f"--encoder_weights {path}: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        raise MllibError(f"--encoder_weights {path} is not a weights-only PyTorch state dict: "
                         f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MllibError(f"--encoder_weights {path} holds no state dict (name -> tensor)")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    own = model.backbone.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} (needs {tuple(own[k].shape)})" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or extra or shapes:
        what = []
        if missing:
            what.append(f"{len(missing)} missing (first {', '.join(missing[:3])})")
        if extra:
            what.append(f"{len(extra)} unexpected (first {', '.join(extra[:3])})")
        if shapes:
            what.append(f"{len(shapes)} of another shape (first {shapes[0]})")
        raise MllibError(f"--encoder_weights {path} does not fit the {model.config['backbone']} backbone "
                         f"(torchvision ResNet names): " + "; ".join(what))
    model.backbone.load_state_dict(state, strict=True)
