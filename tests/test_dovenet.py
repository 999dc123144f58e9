"""DoveNet is the tutorial's network: same layers, same parameter counts, input-sized class scores."""

from __future__ import annotations

import contextlib
import io

import paddle
import pytest

from stages.models import dovenet
from stages.models.dovenet import DECODER_CHANNELS, ENCODER_CHANNELS, DoveNet, SeparableConv2D, count_parameters

# What the tutorial's paddle.summary printed for 2 classes at 224x224.
TUTORIAL_TOTAL, TUTORIAL_TRAINABLE, TUTORIAL_NON_TRAINABLE = 2_058_690, 2_051_138, 7_552
# BatchNorm channels: stem 32, two BNs per encoder and per decoder block.
BN_CHANNELS = 32 + 2 * sum(ENCODER_CHANNELS) + 2 * sum(DECODER_CHANNELS)


def summary_counts(model, input_size):
    with contextlib.redirect_stdout(io.StringIO()):
        return paddle.summary(model, input_size)


def tutorial_era_counts(model) -> dict[str, int]:
    """The tutorial's Paddle 2.x paddle.summary rule: a layer counts as trainable or not as a whole, by its
    LAST parameter. A BatchNorm's last one is its running variance, so all four of its tensors (scale, shift,
    mean, variance) counted as non-trainable. Paddle 3 counts each parameter on its own."""
    total = trainable = 0
    for layer in model.sublayers(include_self=True):
        own = list(layer._parameters.values())
        size = sum(int(p.size) for p in own)
        total += size
        if own and own[-1].trainable and not own[-1].stop_gradient:
            trainable += size
    return {"total": total, "trainable": trainable, "non_trainable": total - trainable}


def test_parameter_counts_match_the_tutorial():
    paddle.seed(0)
    model = DoveNet(num_classes=2)
    summary = summary_counts(model, (1, 3, 224, 224))
    assert summary["total_params"] == TUTORIAL_TOTAL
    # Paddle 3.3's summary: only the BN running mean/variance are non-trainable.
    assert summary["trainable_params"] == TUTORIAL_TOTAL - 2 * BN_CHANNELS == 2_054_914
    assert count_parameters(model) == {
        "total": TUTORIAL_TOTAL,
        "trainable": 2_054_914,
        "non_trainable": 2 * BN_CHANNELS,
    }
    # The tutorial's own figures, under the summary rule of its Paddle version.
    assert tutorial_era_counts(model) == {
        "total": TUTORIAL_TOTAL,
        "trainable": TUTORIAL_TRAINABLE,
        "non_trainable": TUTORIAL_NON_TRAINABLE,
    }


def test_parameter_count_follows_the_number_of_classes():
    # Only the output conv (32 -> classes, 3x3, with bias) depends on it.
    assert count_parameters(DoveNet(5))["total"] - count_parameters(DoveNet(2))["total"] == 3 * (32 * 9 + 1)


def test_layers_are_the_tutorials():
    model = DoveNet(2)
    assert model.conv_1.weight.shape == [32, 3, 3, 3] and model.conv_1._stride == [2, 2]
    assert [len(model.encoders), len(model.decoders)] == [3, 4]
    channels_in = [32, *ENCODER_CHANNELS[:-1]]
    for encoder, c_in, c_out in zip(model.encoders, channels_in, ENCODER_CHANNELS):
        first = encoder.separable_conv_01
        assert isinstance(first, SeparableConv2D)
        assert first.weight_conv.shape == [c_in, 1, 3, 3]  # depthwise 3x3, no bias
        assert first.weight_pointwise.shape == [c_out, c_in, 1, 1]  # pointwise 1x1 with bias
        assert first.bias_pointwise.shape == [c_out]
        assert encoder.residual_conv.weight.shape == [c_out, c_in, 1, 1]
        assert encoder.residual_conv._stride == [2, 2]
    for decoder, c_in, c_out in zip(model.decoders, [256, *DECODER_CHANNELS[:-1]], DECODER_CHANNELS):
        assert decoder.conv_transpose_01.weight.shape == [c_in, c_out, 3, 3]
        assert decoder.residual_conv.weight.shape == [c_out, c_in, 1, 1]
    assert model.output_conv.weight.shape == [2, 32, 3, 3]


@pytest.mark.parametrize("height,width", [(32, 32), (64, 48), (96, 128)])
def test_output_is_class_scores_at_input_size(height, width):
    model = DoveNet(3)
    model.eval()
    out = model(paddle.rand([2, 3, height, width]))
    assert out.shape == [2, 3, height, width]


def build(num_classes: int, monkeypatch=None, scale_factor: bool = False) -> DoveNet:
    """DoveNet under fresh layer names (paddle.summary prints them). scale_factor=True: the previous
    definition, whose decoders upsampled with nn.Upsample(scale_factor=2.0), which paddle2onnx 2.1
    cannot convert from Paddle 3.3."""
    with monkeypatch.context() as patch, paddle.utils.unique_name.guard():
        if scale_factor:
            patch.setattr(dovenet, "Upsample", lambda factor: paddle.nn.Upsample(scale_factor=float(factor)))
        return DoveNet(num_classes)


def summary_text(model, input_size) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        paddle.summary(model, input_size)
    return buffer.getvalue()


def test_explicit_size_upsampling_changes_neither_outputs_nor_summary(monkeypatch):
    paddle.seed(1)
    model = build(3, monkeypatch)
    old = build(3, monkeypatch, scale_factor=True)
    assert isinstance(old.decoders[0].upsamples[0], paddle.nn.Upsample)
    assert not isinstance(old.decoders[0].upsamples[0], dovenet.Upsample)
    old.set_state_dict(model.state_dict())
    assert summary_text(model, (1, 3, 64, 64)) == summary_text(old, (1, 3, 64, 64))
    assert count_parameters(model) == count_parameters(old)
    for module in (model, old):
        module.eval()
    for height, width in ((32, 32), (48, 80)):
        x = paddle.rand([2, 3, height, width])
        assert (model(x).numpy() == old(x).numpy()).all()
