"""DoveNet: the original tutorial's small U-Net-like segmentation network (Xception-style encoder).

Layout, exactly as the tutorial's: a stride-2 stem conv, three encoder blocks (32->64->128->256) of
separable convs with a max-pool and a 1x1 stride-2 residual, four decoder blocks (256->256->128->64->32)
of transposed convs with a x2 upsample and an upsampled 1x1 residual, and a 3x3 conv to class scores.
The output has the input's spatial size when that size is a multiple of 16.

The x2 upsamples compute their output size from the input's shape instead of passing a scale factor:
the same nearest-neighbour result, but paddle2onnx 2.1 cannot convert a scale factor from Paddle 3.3
(it stores the scales as doubles), and an explicit size keeps the ONNX graph's height and width dynamic.
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle import nn

ENCODER_CHANNELS = (64, 128, 256)
DECODER_CHANNELS = (256, 128, 64, 32)
STEM_CHANNELS = 32


class SeparableConv2D(nn.Layer):
    """A depthwise 3x3 conv without bias, then a pointwise 1x1 conv with bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.in_channels = in_channels
        self.weight_conv = self.create_parameter(shape=[in_channels, 1, kernel_size, kernel_size])
        self.weight_pointwise = self.create_parameter(shape=[out_channels, in_channels, 1, 1])
        self.bias_pointwise = self.create_parameter(shape=[out_channels], is_bias=True)

    def forward(self, x):
        x = F.conv2d(x, self.weight_conv, padding="same", groups=self.in_channels)
        return F.conv2d(x, self.weight_pointwise, bias=self.bias_pointwise)


class Upsample(nn.Upsample):
    """nn.Upsample by an integer factor, to an output size computed from the input's shape (see above)."""

    def __init__(self, factor: int = 2):
        super().__init__(scale_factor=float(factor))
        self.factor = factor

    def forward(self, x):
        size = paddle.shape(x)[2:] * self.factor  # a tensor: stays dynamic in exported graphs
        return F.interpolate(x, size=size, mode=self.mode, data_format="NCHW")


class Encoder(nn.Layer):
    """Halves the spatial size: two separable convs and a max-pool, plus a 1x1 stride-2 residual conv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.relus = nn.LayerList([nn.ReLU() for _ in range(2)])
        self.separable_conv_01 = SeparableConv2D(in_channels, out_channels)
        self.separable_conv_02 = SeparableConv2D(out_channels, out_channels)
        self.bns = nn.LayerList([nn.BatchNorm2D(out_channels) for _ in range(2)])
        self.pool = nn.MaxPool2D(kernel_size=3, stride=2, padding=1)
        self.residual_conv = nn.Conv2D(in_channels, out_channels, kernel_size=1, stride=2, padding="same")

    def forward(self, x):
        y = self.bns[0](self.separable_conv_01(self.relus[0](x)))
        y = self.bns[1](self.separable_conv_02(self.relus[1](y)))
        return self.pool(y) + self.residual_conv(x)


class Decoder(nn.Layer):
    """Doubles the spatial size: two 3x3 transposed convs and an upsample, plus an upsampled 1x1 residual."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.relus = nn.LayerList([nn.ReLU() for _ in range(2)])
        self.conv_transpose_01 = nn.Conv2DTranspose(in_channels, out_channels, kernel_size=3, padding=1)
        self.conv_transpose_02 = nn.Conv2DTranspose(out_channels, out_channels, kernel_size=3, padding=1)
        self.bns = nn.LayerList([nn.BatchNorm2D(out_channels) for _ in range(2)])
        self.upsamples = nn.LayerList([Upsample(2) for _ in range(2)])
        self.residual_conv = nn.Conv2D(in_channels, out_channels, kernel_size=1, padding="same")

    def forward(self, x):
        y = self.bns[0](self.conv_transpose_01(self.relus[0](x)))
        y = self.bns[1](self.conv_transpose_02(self.relus[1](y)))
        return self.upsamples[0](y) + self.residual_conv(self.upsamples[1](x))


class DoveNet(nn.Layer):
    """Input NCHW float images, output NCHW class scores (logits) of the same height and width."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.conv_1 = nn.Conv2D(3, STEM_CHANNELS, kernel_size=3, stride=2, padding="same")
        self.bn = nn.BatchNorm2D(STEM_CHANNELS)
        self.relu = nn.ReLU()
        channels = STEM_CHANNELS
        encoders = []
        for out_channels in ENCODER_CHANNELS:
            encoders.append(Encoder(channels, out_channels))
            channels = out_channels
        decoders = []
        for out_channels in DECODER_CHANNELS:
            decoders.append(Decoder(channels, out_channels))
            channels = out_channels
        self.encoders = nn.LayerList(encoders)
        self.decoders = nn.LayerList(decoders)
        # Small initial class scores: the residual sums grow the activations block by block (std ~20 at
        # the output with the default init), which starts training at a cross-entropy of ~15.
        self.output_conv = nn.Conv2D(
            channels,
            num_classes,
            kernel_size=3,
            padding="same",
            weight_attr=nn.initializer.Normal(std=0.001),
            bias_attr=nn.initializer.Constant(0.0),
        )

    def forward(self, x):
        y = self.relu(self.bn(self.conv_1(x)))
        for encoder in self.encoders:
            y = encoder(y)
        for decoder in self.decoders:
            y = decoder(y)
        return self.output_conv(y)


def count_parameters(model: nn.Layer) -> dict[str, int]:
    """Parameter counts as paddle.summary reports them (BN running stats count as non-trainable)."""
    trainable = sum(int(p.size) for p in model.parameters() if not p.stop_gradient)
    non_trainable = sum(int(p.size) for p in model.parameters() if p.stop_gradient)
    # BatchNorm's running mean/variance are buffers, not parameters, but paddle.summary counts them.
    non_trainable += sum(int(b.size) for b in model.buffers())
    return {"total": trainable + non_trainable, "trainable": trainable, "non_trainable": non_trainable}


if __name__ == "__main__":
    paddle.summary(DoveNet(2), (1, 3, 224, 224))
    print(count_parameters(DoveNet(2)))
