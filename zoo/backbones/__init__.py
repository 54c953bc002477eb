"""Architectures by name. Registry entries name one of these plus its keyword arguments."""

from __future__ import annotations

from typing import Callable

from zoo.backbones.alexnet import DEEPCLUSTER_WIDTHS, ROTNET_WIDTHS, AlexNet
from zoo.backbones.base import Backbone, Sobel
from zoo.backbones.iic import IICNet5g
from zoo.backbones.nin import NIN
from zoo.backbones.resnet import GeMResNet, ResNet, SmallResNet
from zoo.backbones.splitbrain import SplitBrainNet
from zoo.backbones.vgg import VGG16BN
from zoo.errors import BadArgumentsError, UnknownNameError, UsageError, ZooError


def _alexnet_rotnet(**kw) -> AlexNet:
    return AlexNet(widths=ROTNET_WIDTHS, fc_style="bn", **kw)


def _alexnet_deepcluster(**kw) -> AlexNet:
    kw.setdefault("sobel", True)
    return AlexNet(widths=DEEPCLUSTER_WIDTHS, fc_style="dropout", **kw)


def _alexnet_sela(**kw) -> AlexNet:
    return AlexNet(widths=DEEPCLUSTER_WIDTHS, fc_style="dropout", sobel=False, **kw)


ARCHITECTURES: dict[str, Callable[..., Backbone]] = {
    "alexnet_rotnet": _alexnet_rotnet,
    "alexnet_deepcluster": _alexnet_deepcluster,
    "alexnet_sela": _alexnet_sela,
    "vgg16_bn": VGG16BN,
    "resnet18": lambda **kw: ResNet(depth=18, **kw),
    "resnet50": lambda **kw: ResNet(depth=50, **kw),
    "resnet50_gem": lambda **kw: GeMResNet(depth=50, **kw),
    "resnet_small": SmallResNet,
    "nin": NIN,
    "iic_net5g": IICNet5g,
    "splitbrain": SplitBrainNet,
}


def build_architecture(arch: str, **kwargs) -> Backbone:
    try:
        builder = ARCHITECTURES[arch]
    except KeyError:
        raise UnknownNameError("architecture", arch, ARCHITECTURES) from None
    try:
        return builder(**kwargs)
    except ZooError:  # already one line that says what to do (ZooErrors are ValueErrors too)
        raise
    except TypeError as err:  # an unexpected keyword argument, or a value of the wrong type
        raise BadArgumentsError(f"bad arguments for architecture {arch!r}: {err}") from None
    except ValueError as err:  # a value out of range
        raise UsageError(f"bad arguments for architecture {arch!r}: {err}") from None


__all__ = ["ARCHITECTURES", "AlexNet", "Backbone", "GeMResNet", "IICNet5g", "NIN", "ResNet",
           "Sobel", "SmallResNet", "SplitBrainNet", "VGG16BN", "build_architecture"]
