"""ResNet encoder f = f^(S) ∘ ... ∘ f^(1) whose stages are exposed as named taps.

The paper uses a ResNet-50 with taps after stages 3 and 4 (§4.2). We build the same
family from torchvision's residual blocks with two additions a CPU user needs: a width
multiplier (so a preset can be narrow) and the usual small-image stem for 28-32 px
inputs (3x3 conv, stride 1, no max-pool). Any torchvision ResNet also plugs in through
:meth:`TappedResNet.from_torchvision`.

Symbols: B batch, C channels, H W spatial size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from anomem.choices import SMALL_SIDE, STEMS
from anomem.errors import ConfigError

STAGES = ("layer1", "layer2", "layer3", "layer4")
_DEPTHS = {
    "resnet18": (tv_resnet.BasicBlock, (2, 2, 2, 2)),
    "resnet34": (tv_resnet.BasicBlock, (3, 4, 6, 3)),
    "resnet50": (tv_resnet.Bottleneck, (3, 4, 6, 3)),
}


def _make_stage(block: type, inplanes: int, planes: int, blocks: int, stride: int) -> tuple[nn.Sequential, int]:
    downsample = None
    out = planes * block.expansion
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(out),
        )
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(out, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers), out


class TappedResNet(nn.Module):
    """A ResNet that returns the feature maps of the requested stages.

    Args:
        stem: module mapping the image to the first stage's input.
        stages: the four residual stages ``layer1..layer4`` in order.
        stage_channels: output channels C_s of each stage.
        taps: names of the stages to return, shallow to deep. Stages after the
            deepest tap are dropped (never computed).

    Shape:
        input (B, C_in, H, W) -> list of (B, C_s, H_s, W_s), one per tap.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: Sequence[nn.Module],
        stage_channels: Sequence[int],
        taps: Sequence[str],
    ) -> None:
        super().__init__()
        for t in taps:
            if t not in STAGES:
                raise ConfigError(f"unknown tap {t!r}; a ResNet exposes {STAGES}")
        if len(stages) != 4 or len(stage_channels) != 4:
            raise ConfigError("a ResNet backbone needs exactly four stages layer1..layer4")
        self.taps = tuple(taps)
        last = max(STAGES.index(t) for t in self.taps)
        self.stem = stem
        # Keep the torchvision names so state dicts read naturally.
        self.layers = nn.ModuleDict({STAGES[i]: stages[i] for i in range(last + 1)})
        self.tap_channels = tuple(stage_channels[STAGES.index(t)] for t in self.taps)

    def stage_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every computed stage's map by name (up to the deepest tap), one pass."""
        x = self.stem(x)
        out = {}
        for name, stage in self.layers.items():
            x = stage(x)
            out[name] = x  # (B, C_s, H_s, W_s)
        return out

    def freeze(self, names: Sequence[str]) -> None:
        """Stop gradients to the parameters of the stages ``names`` (``stem``, ``layer1``...),
        in place; a stage this backbone does not compute (deeper than its taps) is ignored."""
        for name in names:
            module = self.stem if name == "stem" else self.layers[name] if name in self.layers else None
            for p in () if module is None else module.parameters():
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.stage_maps(x)
        return [maps[t] for t in self.taps]

    def stage_channels(self, name: str) -> int:
        """Output channels of a computed stage."""
        last = self.layers[name][-1]
        return int(getattr(last, "bn3", getattr(last, "bn2", None)).num_features)

    @classmethod
    def build(
        cls,
        arch: str,
        taps: Sequence[str],
        in_channels: int = 3,
        width: int = 64,
        stem: str = "small",
    ) -> TappedResNet:
        """Our own ResNet-18/34/50 with a width multiplier and a choice of stem."""
        if arch.startswith("torchvision:"):
            return cls.from_torchvision(arch.split(":", 1)[1], taps, in_channels=in_channels, stem=stem)
        if arch not in _DEPTHS:
            raise ConfigError(f"unknown backbone {arch!r}; choose from {sorted(_DEPTHS)} or 'torchvision:<name>'")
        if in_channels not in (1, 3):
            raise ConfigError(f"in_channels must be 1 or 3, got {in_channels}")
        block, depths = _DEPTHS[arch]
        stem_mod = _make_stem(in_channels, width, stem)
        stages, chans, inplanes = [], [], width
        for i, n in enumerate(depths):
            stage, inplanes = _make_stage(block, inplanes, width * 2**i, n, stride=1 if i == 0 else 2)
            stages.append(stage)
            chans.append(inplanes)
        net = cls(stem_mod, stages, chans, taps)
        _init_weights(net)
        return net

    @classmethod
    def from_torchvision(
        cls, name_or_model: str | nn.Module, taps: Sequence[str], in_channels: int = 3, stem: str = "imagenet"
    ) -> TappedResNet:
        """Wrap a torchvision ResNet (a constructor name like ``resnet50`` or a module).

        No weights are downloaded: a name builds a randomly initialised network. With
        ``stem="small"`` the 7x7/stride-2 convolution and max-pool are replaced by the
        small-image stem; ``in_channels=1`` swaps the first convolution accordingly.
        """
        if isinstance(name_or_model, str):
            ctor = getattr(tv_resnet, name_or_model, None)
            if ctor is None or not name_or_model.startswith(("resnet", "resnext", "wide_resnet")):
                raise ConfigError(f"torchvision has no ResNet called {name_or_model!r}")
            model = ctor(weights=None)
        else:
            model = name_or_model
        for attr in ("conv1", "bn1", "relu", "maxpool", *STAGES):
            if not hasattr(model, attr):
                raise ConfigError(f"model {type(model).__name__} is not a torchvision ResNet (missing {attr})")
        width = model.conv1.out_channels
        if stem in ("small", "imagenet8") or in_channels != model.conv1.in_channels:
            stem_mod = _make_stem(in_channels, width, stem)
        else:
            stem_mod = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        stages = [getattr(model, s) for s in STAGES]
        chans = []
        for s in stages:
            last = s[-1]
            chans.append(last.bn3.num_features if hasattr(last, "bn3") else last.bn2.num_features)
        return cls(stem_mod, stages, chans, taps)


class WeightsReport(NamedTuple):
    """What :func:`load_resnet_weights` did: counts, and the names behind them.

    Attributes:
        loaded: backbone tensors taken from the file.
        mismatched: file tensors whose name matched but whose shape did not (kept random).
        unused: file tensors with no backbone tensor of that name (``fc.*``, stages
            after the deepest tap).
        missing: backbone tensors the file does not hold (kept random).
        summed_rgb: True when a 3-channel first convolution was summed into a 1-channel one.
    """

    loaded: int
    mismatched: tuple[str, ...]
    unused: tuple[str, ...]
    missing: tuple[str, ...]
    summed_rgb: bool = False

    def describe(self) -> str:
        text = (f"loaded {self.loaded} tensors; {len(self.mismatched)} of another shape and {len(self.missing)} "
                f"absent kept random; {len(self.unused)} in the file unused")
        return text + ("; RGB first convolution summed to 1 channel" if self.summed_rgb else "")


def _torchvision_name(key: str) -> str:
    """A torchvision ResNet state-dict key in :class:`TappedResNet`'s names."""
    for prefix in ("module.", "backbone."):
        key = key.removeprefix(prefix)
    if key.startswith("conv1."):
        return "stem.0." + key[len("conv1."):]
    if key.startswith("bn1."):
        return "stem.1." + key[len("bn1."):]
    if key.split(".")[0] in STAGES:
        return "layers." + key
    return key  # already ours (stem.*, layers.*) or unused (fc.*)


def load_resnet_weights(backbone: TappedResNet, path: str | Path) -> WeightsReport:
    """Load a torchvision ResNet state dict from a local file into ``backbone``, in place.

    Never downloads. The rule: torchvision names are mapped to ours (``conv1`` /
    ``bn1`` -> the stem, ``layerN`` -> ``layers.layerN``; a ``module.`` prefix is
    dropped; a dict under ``"state_dict"`` or ``"model"`` is unwrapped), then every
    tensor whose name AND shape match is copied; the rest stays as initialised and is
    counted in the returned :class:`WeightsReport` (``fc.*`` is always unused;
    BatchNorm's ``num_batches_tracked`` counters are neither loaded nor counted). A
    3-channel first convolution is summed over its input channels into a 1-channel one
    (the usual way to reuse RGB filters on grey images). A file where nothing matches
    (a narrower width, another depth) is an error.

    Raises:
        ConfigError: the file is missing, unreadable, not a state dict, or matches nothing.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"backbone.weights: file {str(path)!r} does not exist (weights are never downloaded)")
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and torch errors alike
        raise ConfigError(f"backbone.weights: cannot read {str(path)!r} as a state dict: {str(e).splitlines()[0]}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"backbone.weights: {str(path)!r} does not hold a state dict (name -> tensor)")
    counter = "num_batches_tracked"  # BatchNorm's step counter: no weight, and every file's matches
    own = {k: v for k, v in backbone.state_dict().items() if not k.endswith(counter)}
    take: dict[str, torch.Tensor] = {}
    mismatched, unused, summed = [], [], False
    for key, value in state.items():
        if key.endswith(counter):
            continue
        name = _torchvision_name(key)
        if name not in own:
            unused.append(key)
            continue
        target, rgb = own[name], False
        if name == "stem.0.weight" and value.ndim == 4 and value.shape[1] == 3 and target.shape[1] == 1:
            value, rgb = value.sum(1, keepdim=True), True
        if value.shape != target.shape:
            mismatched.append(f"{key} {tuple(value.shape)} vs {name} {tuple(target.shape)}")
            continue
        take[name] = value.to(target.dtype)
        summed = summed or rgb
    if not take:
        example = f" (e.g. {mismatched[0]})" if mismatched else ""
        raise ConfigError(f"backbone.weights: no tensor of {str(path)!r} matches this backbone in name and shape"
                          f"{example}; it needs a torchvision ResNet of the same depth and width")
    backbone.load_state_dict(take, strict=False)
    missing = tuple(k for k in own if k not in take)
    return WeightsReport(len(take), tuple(mismatched), tuple(unused), missing, summed)




def resolve_stem(stem: str, image_size: Sequence[int] | None) -> str:
    """The stem for images of ``image_size`` (H, W): ``auto`` keeps the grids of every
    tap those of a 32-px image under the small stem (28-48 px: ``small``, stride 1; up to
    ~192 px: ``imagenet``, stride 4; larger: ``imagenet8``, stride 8), so the memories and
    banks see patches of about the same share of the image from 28 px to 512 px and the
    cost per image stays near that of a 32-px one. Any other name is returned as is."""
    if stem != "auto":
        return stem
    side = max(image_size) if image_size else 32
    return "small" if side <= SMALL_SIDE else "imagenet" if side <= 192 else "imagenet8"


def _make_stem(in_channels: int, width: int, stem: str) -> nn.Module:
    if stem == "imagenet8":  # the ImageNet stem and one more halving, for large inputs
        conv = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
                             nn.AvgPool2d(2))
    if stem == "small":
        conv = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True))
    if stem == "imagenet":
        conv = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
    raise ConfigError(f"unknown stem {stem!r}; expected one of {STEMS}")


def _init_weights(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


__all__ = ["STAGES", "STEMS", "TappedResNet", "resolve_stem", "WeightsReport", "load_resnet_weights"]
