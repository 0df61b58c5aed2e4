"""Deep-stem dilated ResNet-50 with frozen batch norm (docs/model.md, "Backbone").

The authors use the PSPNet/PFENet "resnet50_v2" ImageNet weights: a three-conv 3x3 stem
(64, 64, 128 channels) replaces torchvision's 7x7 conv, and layer3/layer4 trade their stride
for dilation so that the output stride is 8. Blocks come from torchvision; only the stem and
the layer assembly (which torchvision hard-codes to a 64-channel stem) are written here.

The forward pass folds every frozen batch norm into the convolution before it (one conv with
a bias instead of a conv and a per-channel affine pass) and runs in channels-last memory
format: about 18 % less time on CPU (2.0 s instead of 2.43 s for five 240x424 frames, 2
cores), the same numbers up to float rounding (the golden cases check it).
"""
from __future__ import annotations

import os
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck
from torchvision.ops import FrozenBatchNorm2d

from utils.fileio import unreadable_reason

from .errors import ModelError

RESNET50_BLOCKS = (3, 4, 6, 3)
STEM_CHANNELS = (64, 64, 128)
# (planes, stride, dilate) for layer1..layer4: layer3/4 dilate instead of striding (output stride 8).
LAYER_SETTINGS = ((64, 1, False), (128, 2, False), (256, 2, True), (512, 2, True))
# Backbone outputs, keyed as the reference keys them: '0'..'3' = layer1..layer4.
RETURN_LAYERS = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
LEVEL_CHANNELS = {"0": 256, "1": 512, "2": 1024, "3": 2048}
# Where the authors publish the ImageNet weights (their README, github.com/nankepan/VIPMT,
# "Download the ImageNet pretrained backbone").
WEIGHTS_URL = "https://drive.google.com/file/d/1PIMA7uG_fcvXUvjDUL7UIVp6KmGdSFKi/view?usp=sharing"
WEIGHTS_FILE = "pretrain_model/resnet50_v2.pth"
WEIGHTS_CHECK_COMMAND = f"python -m models.check_weights {WEIGHTS_FILE}"
WEIGHTS_HELP = (
    f"Expected the deep-stem ResNet-50 ImageNet weights 'resnet50_v2.pth' that the VIPMT authors use "
    f"(the PSPNet/PFENet state dict with torchvision-style names). Download it from {WEIGHTS_URL} "
    f"to {WEIGHTS_FILE} and check it with '{WEIGHTS_CHECK_COMMAND}' (details: pretrain_model/README.md), "
    f"or start from a random backbone with backbone_weights=None / --backbone-weights none (much worse results)."
)
# Entries of the published file that the backbone does not use.
IGNORED_PREFIXES = ("fc.",)              # the ImageNet classifier
IGNORED_SUFFIXES = ("num_batches_tracked",)  # counters of the trainable batch norms it was trained with
HTML_SNIFF_BYTES = 64   # enough to recognise an HTML page saved in place of the weights


def _conv_bn_relu_stem() -> "OrderedDict[str, nn.Module]":
    """Three 3x3 convs (the first with stride 2), each with frozen BN and ReLU, then max-pool."""
    stem = OrderedDict()
    in_ch = 3
    for i, out_ch in enumerate(STEM_CHANNELS, start=1):
        stem[f"conv{i}"] = nn.Conv2d(in_ch, out_ch, 3, stride=2 if i == 1 else 1, padding=1, bias=False)
        stem[f"bn{i}"] = FrozenBatchNorm2d(out_ch)
        stem[f"relu{i}"] = nn.ReLU(inplace=True)
        in_ch = out_ch
    stem["maxpool"] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    return stem


def _make_layer(inplanes: int, planes: int, blocks: int, stride: int, dilation: int,
                new_dilation: int) -> nn.Sequential:
    """A torchvision-style stage: the first block keeps the previous dilation (as torchvision's
    `replace_stride_with_dilation` does), the others use the new one."""
    out_ch = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or inplanes != out_ch:
        downsample = nn.Sequential(nn.Conv2d(inplanes, out_ch, 1, stride=stride, bias=False),
                                   FrozenBatchNorm2d(out_ch))
    layers = [Bottleneck(inplanes, planes, stride, downsample, dilation=dilation, norm_layer=FrozenBatchNorm2d)]
    layers += [Bottleneck(out_ch, planes, dilation=new_dilation, norm_layer=FrozenBatchNorm2d)
               for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def deep_stem_resnet50() -> nn.Sequential:
    """The full network as one Sequential whose child names are the torchvision/reference names."""
    modules = _conv_bn_relu_stem()
    inplanes, dilation = STEM_CHANNELS[-1], 1
    for index, ((planes, stride, dilate), blocks) in enumerate(zip(LAYER_SETTINGS, RESNET50_BLOCKS), start=1):
        new_dilation = dilation * stride if dilate else dilation
        modules[f"layer{index}"] = _make_layer(inplanes, planes, blocks, 1 if dilate else stride,
                                               dilation, new_dilation)
        inplanes, dilation = planes * Bottleneck.expansion, new_dilation
    return nn.Sequential(modules)


def fold_frozen_norm(conv: nn.Conv2d, norm: FrozenBatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of `norm(conv(x))` as one convolution.

    torch.nn.utils.fusion.fuse_conv_bn_weights' arithmetic, operation for operation (the same
    bits), without wrapping the results in new nn.Parameters: creating a Parameter breaks
    torch.compile's graph at every convolution (test_compile)."""
    mean = norm.running_mean
    bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
    var_rsqrt = torch.rsqrt(norm.running_var + norm.eps)
    weight = conv.weight * (norm.weight * var_rsqrt).reshape(-1, 1, 1, 1)
    return weight, (bias - mean) * var_rsqrt * norm.weight + norm.bias


def conv_frozen_norm(x: torch.Tensor, conv: nn.Conv2d, norm: FrozenBatchNorm2d) -> torch.Tensor:
    """`norm(conv(x))` as one convolution: the norm's per-channel scale and shift folded into
    the conv's weight and bias."""
    weight, bias = fold_frozen_norm(conv, norm)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def bottleneck(block: Bottleneck, x: torch.Tensor) -> torch.Tensor:
    """torchvision's Bottleneck computation with folded norms."""
    out = F.relu(conv_frozen_norm(x, block.conv1, block.bn1), inplace=True)
    out = F.relu(conv_frozen_norm(out, block.conv2, block.bn2), inplace=True)
    out = conv_frozen_norm(out, block.conv3, block.bn3)
    identity = x if block.downsample is None else conv_frozen_norm(x, *block.downsample)
    return F.relu(out.add_(identity), inplace=True)


class Backbone(nn.Module):
    """Frozen feature extractor. `body` holds the reference parameter names."""

    def __init__(self, weights: str | None = None):
        super().__init__()
        self.body = deep_stem_resnet50()
        if weights is not None:
            self.load_imagenet_weights(weights)
        self.requires_grad_(False)

    def load_imagenet_weights(self, path: str) -> None:
        """Load a torchvision-style ResNet state dict (`fc.*` and `num_batches_tracked` ignored)."""
        state, _ignored = read_weights_file(path)
        missing, unexpected, wrong_shape = compare_with_backbone(state)
        if missing or unexpected or wrong_shape:
            details = "; ".join(f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                                for label, keys in (("missing", missing), ("unexpected", unexpected),
                                                    ("wrong shape", [k for k, _, _ in wrong_shape])) if keys)
            raise ModelError(f"backbone weights {path} do not fit the deep-stem ResNet-50 ({details}). {WEIGHTS_HELP}")
        self.body.load_state_dict(state, strict=True)

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """images [N,3,H,W] -> {'0': [N,256,H/4,W/4], '1': [N,512,h,w], '2': [N,1024,h,w], '3': [N,2048,h,w]}
        (channels-last tensors)."""
        body = self.body
        x = images.contiguous(memory_format=torch.channels_last)
        for index in range(1, len(STEM_CHANNELS) + 1):
            x = F.relu(conv_frozen_norm(x, getattr(body, f"conv{index}"), getattr(body, f"bn{index}")), inplace=True)
        x = body.maxpool(x)
        levels = OrderedDict()
        for layer, key in RETURN_LAYERS.items():
            for block in getattr(body, layer):
                x = bottleneck(block, x)
            levels[key] = x
        return levels


def read_weights_file(path: str) -> "tuple[dict[str, torch.Tensor], list[str]]":
    """(backbone entries, ignored entry names) of a ResNet weights file.

    Accepts a bare state dict or ``{'state_dict': ...}``, with or without the ``module.`` prefix
    of (Distributed)DataParallel; drops ``fc.*`` and ``num_batches_tracked``. Loads with
    ``weights_only=True``. Raises ModelError (naming the file) when it is absent or unreadable."""
    if not os.path.lexists(path):
        raise ModelError(f"backbone weights not found: {path}. {WEIGHTS_HELP}")
    problem = unreadable_reason(path)          # a named pipe would make torch.load wait forever
    if problem:
        raise ModelError(f"backbone weights {path} {problem}. {WEIGHTS_HELP}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable or not a torch file
        raise ModelError(f"cannot read backbone weights {path}: {_unreadable_reason(path, exc)}. "
                         f"{WEIGHTS_HELP}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"backbone weights {path} hold a {type(state).__name__}, not a state dict. {WEIGHTS_HELP}")
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    ignored = sorted(k for k in state if k.startswith(IGNORED_PREFIXES) or k.endswith(IGNORED_SUFFIXES))
    return {k: v for k, v in state.items() if k not in ignored}, ignored


def _unreadable_reason(path: str, exc: Exception) -> str:
    """One line on why torch.load failed (its own message spans several lines and suggests
    weights_only=False, which is no remedy for a file that is not a checkpoint)."""
    with open(path, "rb") as f:
        head = f.read(HTML_SNIFF_BYTES).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return ("the file is an HTML page, not the weights (a download page saved in place of the file; "
                "download it again from a browser)")
    text = str(exc)
    marker = "WeightsUnpickler error:"
    detail = text.split(marker, 1)[1] if marker in text else text
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    return (f"not a readable PyTorch state dict ({os.path.getsize(path)} bytes; "
            f"{exc.__class__.__name__}: {lines[0] if lines else 'no detail'})")


def expected_weight_shapes() -> "OrderedDict[str, tuple[int, ...]]":
    """{name: shape} of every tensor the deep-stem ResNet-50 loads (275 tensors), in model order."""
    with torch.device("meta"):  # shapes only: no memory, no random initialisation
        body = deep_stem_resnet50()
    return OrderedDict((k, tuple(v.shape)) for k, v in body.state_dict().items())


def compare_with_backbone(state: dict) -> "tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]":
    """(missing names, unexpected names, [(name, file shape, expected shape)]) of a state dict
    against the deep-stem ResNet-50; all empty when it fits. Non-tensor entries count as
    unexpected."""
    expected = expected_weight_shapes()
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    missing = [k for k in expected if k not in tensors]
    unexpected = sorted(k for k in state if k not in expected or k not in tensors)
    wrong_shape = [(k, tuple(tensors[k].shape), shape) for k, shape in expected.items()
                   if k in tensors and tuple(tensors[k].shape) != shape]
    return missing, unexpected, wrong_shape
