"""A reference PyTorch ResNet with torchvision's module names, written independently of the
Flax model, to check exported encoders (tests, ``colab/03_export_to_pytorch.ipynb``).

It mirrors ``torchvision.models.resnet`` (BasicBlock / Bottleneck v1.5, ``downsample`` =
``Sequential(conv1x1, BatchNorm2d)``, no ``fc``) for every architecture of
:data:`rsjax.models.resnet.ARCHS`, including the small ``tiny`` one that torchvision lacks,
any number of input bands and both stems, so an exported ``torchvision``-format state dict
loads with ``strict=True``::

    from rsjax.export import load_state_dict, torch_resnet

    net = torch_resnet.reference_resnet("resnet50", in_channels=13)
    net.load_state_dict(load_state_dict("encoder.pt"), strict=True)
    pooled = torch_resnet.pooled_features(net, images_nhwc)    # numpy [N, C]

``forward`` returns ``(pooled [N, C], [c1, c2, c3, c4])`` (NCHW tensors of the four stages).

torch is imported only when a network is built, so ``import rsjax.export`` stays torch-free.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np

from rsjax.export.torch_export import load_state_dict, sidecar_path
from rsjax.models.resnet import ARCHS

STEMS = ("standard", "cifar")


@functools.lru_cache(maxsize=None)
def _modules() -> dict[str, Any]:
    """The torch module classes, defined on first use (torch is imported here)."""
    import torch  # optional dependency (torch): only for the PyTorch side
    from torch import nn  # optional dependency (torch): only for the PyTorch side

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, cin: int, planes: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU()
            self.downsample = None
            if stride != 1 or cin != planes:
                self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            s = x if self.downsample is None else self.downsample(x)
            return self.relu(y + s)

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin: int, planes: int, stride: int):
            super().__init__()
            cout = planes * 4
            self.conv1 = nn.Conv2d(cin, planes, 1, 1, 0, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride on the 3x3
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, cout, 1, 1, 0, bias=False)
            self.bn3 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            s = x if self.downsample is None else self.downsample(x)
            return self.relu(y + s)

    class ReferenceResNet(nn.Module):
        def __init__(self, arch: str, in_channels: int, stem: str = "standard"):
            super().__init__()
            sizes, block, width = ARCHS[arch]
            cls = BasicBlock if block == "basic" else Bottleneck
            if stem == "standard":
                self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
                self.maxpool = nn.MaxPool2d(3, 2, 1)
            else:  # cifar: 3x3 / stride 1 conv, no max pool
                self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
                self.maxpool = nn.Identity()
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU()
            cin = width
            for i, n in enumerate(sizes):
                blocks = []
                for j in range(n):
                    blocks.append(cls(cin, width * 2**i, 2 if (i > 0 and j == 0) else 1))
                    cin = width * 2**i * cls.expansion
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.num_features = cin

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            feats = []
            for i in range(1, 5):
                x = getattr(self, f"layer{i}")(x)
                feats.append(x)
            return torch.flatten(self.avgpool(x), 1), feats

    return {"BasicBlock": BasicBlock, "Bottleneck": Bottleneck, "ReferenceResNet": ReferenceResNet}


def reference_resnet(arch: str, in_channels: int = 3, *, stem: str = "standard"):
    """A fresh (randomly initialised) reference ``torch.nn.Module`` for ``arch`` and ``in_channels``
    bands; its ``state_dict`` keys equal a ``torchvision``-format export of the same encoder."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {sorted(ARCHS)}")
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    if int(in_channels) <= 0:
        raise ValueError(f"in_channels must be > 0, got {in_channels}")
    return _modules()["ReferenceResNet"](arch, int(in_channels), stem)


def from_export(state_dict_or_path, sidecar: dict | None = None):
    """The reference network with an exported ``torchvision``-format encoder loaded (``strict=True``).

    ``state_dict_or_path``: a dict of tensors or the path of a ``.pt`` / ``.safetensors`` export;
    ``sidecar``: its JSON metadata (read from ``<path>.json`` when None and a path is given).
    """
    if isinstance(state_dict_or_path, dict):
        sd = state_dict_or_path
        if sidecar is None:
            raise ValueError("pass the export's JSON sidecar (arch, in_channels, stem) with a state dict")
    else:
        sd = load_state_dict(state_dict_or_path)
        if sidecar is None:
            with open(sidecar_path(state_dict_or_path)) as f:
                sidecar = json.load(f)
    if sidecar.get("format", "torchvision") != "torchvision":
        raise ValueError(f"the reference ResNet takes format 'torchvision' exports, got {sidecar.get('format')!r}")
    net = reference_resnet(sidecar["arch"], sidecar["in_channels"], stem=sidecar.get("stem", "standard"))
    net.load_state_dict(sd, strict=True)
    return net.eval()


def pooled_features(net, images_nhwc, *, return_features: bool = False):
    """Runs ``net`` in eval mode on channels-last numpy images (the Flax layout) and returns
    the pooled features as numpy ``[N, C]`` (and the stage maps as NHWC numpy if asked)."""
    import torch  # optional dependency (torch): only for the PyTorch side

    x = torch.from_numpy(np.ascontiguousarray(np.asarray(images_nhwc, np.float32).transpose(0, 3, 1, 2)))
    net.eval()
    with torch.no_grad():
        pooled, feats = net(x)
    if return_features:
        return pooled.numpy(), [f.numpy().transpose(0, 2, 3, 1) for f in feats]
    return pooled.numpy()
