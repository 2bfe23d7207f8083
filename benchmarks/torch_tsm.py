"""TSM ResNet-50 in pure PyTorch (no torchvision): the reference for `train_speed.py`.

The official TSM design (Lin et al., mit-han-lab/temporal-shift-module): torchvision-style
Bottleneck blocks (stride on the 3x3), the temporal shift of 1/8 of the channels each way at the
start of every residual branch ("blockres"), global average pooling, dropout, FC, average over
segments. Input `[batch * T, 3, H, W]` float32 (NCHW, PyTorch's default layout).
"""

import torch
from torch import nn


def temporal_shift(x, num_segments, fold_div=8):
    nt, c, h, w = x.shape
    x = x.view(nt // num_segments, num_segments, c, h, w)
    fold = c // fold_div
    out = torch.zeros_like(x)
    out[:, :-1, :fold] = x[:, 1:, :fold]  # shift left (frame t takes t+1)
    out[:, 1:, fold:2 * fold] = x[:, :-1, fold:2 * fold]  # shift right
    out[:, :, 2 * fold:] = x[:, :, 2 * fold:]
    return out.view(nt, c, h, w)


def temporal_shift_concat(x, num_segments, fold_div=8):
    """`temporal_shift`'s values as one concat of zero-padded slices: what to export to ONNX. The
    in-place version exports its `zeros_like` as a folded constant per block (a 277 MB .onnx for R50
    at 8x224^2) and its slice assignments as scatters."""
    nt, c, h, w = x.shape
    x = x.view(nt // num_segments, num_segments, c, h, w)
    fold = c // fold_div
    zeros = x.new_zeros(x.shape[0], 1, fold, h, w)
    left = torch.cat([x[:, 1:, :fold], zeros], 1)  # frame t takes t+1
    right = torch.cat([zeros, x[:, :-1, fold:2 * fold]], 1)  # frame t takes t-1
    return torch.cat([left, right, x[:, :, 2 * fold:]], 2).view(nt, c, h, w)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride, num_segments, downsample):
        super().__init__()
        self.num_segments = num_segments
        self.shift = temporal_shift
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.shift(x, self.num_segments)
        out = self.relu(self.bn1(self.conv1(out)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class TSMResNet50(nn.Module):
    def __init__(self, num_classes=400, num_segments=8, dropout=0.5):
        super().__init__()
        self.num_segments = num_segments
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, inplanes = [], 64
        for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(blocks):
                s = stride if i == 0 else 1
                down = None
                if s != 1 or inplanes != planes * 4:
                    down = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, s, bias=False), nn.BatchNorm2d(planes * 4))
                layers.append(Bottleneck(inplanes, planes, s, num_segments, down))
                inplanes = planes * 4
        self.layers = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2048, num_classes)
        nn.init.normal_(self.fc.weight, 0, 0.001)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layers(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        x = self.fc(self.dropout(x))
        return x.view(-1, self.num_segments, x.shape[-1]).mean(1)
