"""ResNet-50 base model (timm's ``resnet50`` layout and state-dict keys, ``num_classes=0``).

Token view for HSSL: the last stage's map (C = 2048 for ResNet-50) flattened row-major is the
patch-token sequence. ResNet has no final norm, so ``patch`` == ``head_input`` and ``cls`` (and
``execute``) is the global average pool, as timm's pooled feature.
"""
import math

from models import env  # noqa: F401  (Jittor's environment before jittor loads)
import jittor as jt
from jittor import nn

from .layers.residual import BatchNorm2d, DropPath, check_image
from .registry import register_model


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, drop_path=0.0):
        super().__init__()
        width = planes
        outplanes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, outplanes, 1, bias=False)
        self.bn3 = BatchNorm2d(outplanes)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path)

    def execute(self, x):
        shortcut = x
        y = nn.relu(self.bn1(self.conv1(x)))
        y = nn.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        if self.downsample is not None:
            shortcut = self.downsample(x)
        return nn.relu(self.drop_path(y) + shortcut)


class ResNet(nn.Module):
    """Bottleneck ResNet. ``layers``/``channels`` may be shrunk for tests; defaults are ResNet-50."""

    def __init__(self, layers=(3, 4, 6, 3), channels=(64, 128, 256, 512), stem_width=64, in_chans=3,
                 drop_path_rate=0.0, zero_init_last=True):
        super().__init__()
        if len(layers) != 4 or len(channels) != 4:
            raise ValueError("ResNet needs 4 stages: layers and channels must have length 4")
        self.conv1 = nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = BatchNorm2d(stem_width)
        self.maxpool = nn.Pool(3, stride=2, padding=1, op="maximum")
        total = sum(layers)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        inplanes, k = stem_width, 0
        for s, (n, planes) in enumerate(zip(layers, channels)):
            stride = 1 if s == 0 else 2
            blocks = []
            for b in range(n):
                downsample = None
                if b == 0 and (stride != 1 or inplanes != planes * Bottleneck.expansion):
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                        BatchNorm2d(planes * Bottleneck.expansion))
                blocks.append(Bottleneck(inplanes, planes, stride if b == 0 else 1, downsample, dpr[k]))
                inplanes = planes * Bottleneck.expansion
                k += 1
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.num_features = inplanes
        self.feature_stride = 32  # input pixels per last-stage token
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
                m.weight.assign(jt.randn(m.weight.shape) * math.sqrt(2.0 / fan_out))
        if zero_init_last:
            # timm's default: each residual branch starts as zero, so every block starts as identity.
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    m.bn3.weight.assign(jt.zeros(m.bn3.weight.shape))

    def _stages(self, x):
        check_image(x, 32, "ResNet")
        x = self.maxpool(nn.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_features(self, x, mask=None):
        if mask is not None:
            raise ValueError("ResNet does not support patch masking (mask must be None)")
        fmap = self._stages(x)
        B, C, H, W = fmap.shape
        tokens = fmap.reshape(B, C, H * W).transpose(0, 2, 1)
        return {"cls": tokens.mean(dim=1), "patch": tokens, "head_input": tokens, "grid": (int(H), int(W))}

    def execute(self, x):
        return self._stages(x).mean(dims=[2, 3])


@register_model(options=("drop_path_rate",))
def resnet50(**kwargs):
    cfg = dict(layers=(3, 4, 6, 3))
    cfg.update(kwargs)  # smaller layers/channels for tests
    return ResNet(**cfg)
