"""Real CNN architectures (ResNet-50 v1.5, DenseNet-121, GoogLeNet) built with onnx.helper."""

from __future__ import annotations

import onnx

from corepipe.zoo._builder import FLOAT, GraphBuilder

__all__ = ["densenet121", "inception_v1", "resnet50"]

NUM_CLASSES = 1000


def _check_image_size(image_size: int, minimum: int = 32) -> None:
    if image_size < minimum or image_size % 32:
        raise ValueError(
            f"image_size must be a multiple of 32 and >= {minimum} (the network downsamples "
            f"by 32); got {image_size}"
        )


def _stem(g: GraphBuilder, x: str, c_out: int, prefix: str, eps: float = 1e-5) -> str:
    """Conv 7x7/2 -> BN -> ReLU -> MaxPool 3x3/2 (pad 1): the ResNet and DenseNet stem."""
    y = g.conv(x, 3, c_out, 7, f"{prefix}conv1" if prefix else "conv1", stride=2, pad=3)
    y = g.bn(y, c_out, f"{prefix}bn1" if prefix else "bn1", eps)
    y = g.relu(y, "stem")
    return g.node("MaxPool", [y], "stem", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])


# ---------------------------------------------------------------------------- ResNet-50
def _bottleneck(
    g: GraphBuilder, x: str, c_in: int, width: int, stride: int, prefix: str, gain: float
) -> tuple[str, int]:
    """ResNet v1.5 bottleneck: the stride sits on the 3x3 conv; projection when shape changes.

    ``gain`` damps conv3's He init so that the residual sum does not double its variance in
    every one of the 16 blocks (fixed BN statistics do not renormalize at inference).
    """
    c_out = width * 4
    y = g.relu(g.bn(g.conv(x, c_in, width, 1, f"{prefix}.conv1"), width, f"{prefix}.bn1"), prefix)
    y = g.conv(y, width, width, 3, f"{prefix}.conv2", stride=stride)
    y = g.relu(g.bn(y, width, f"{prefix}.bn2"), prefix)
    y = g.bn(g.conv(y, width, c_out, 1, f"{prefix}.conv3", gain=gain), c_out, f"{prefix}.bn3")
    if stride != 1 or c_in != c_out:
        sc = g.conv(x, c_in, c_out, 1, f"{prefix}.downsample.0", stride=stride, pad=0)
        sc = g.bn(sc, c_out, f"{prefix}.downsample.1")
    else:
        sc = x
    y = g.node("Add", [y, sc], prefix)
    return g.relu(y, prefix), c_out


def resnet50(image_size: int = 224, seed: int = 0) -> onnx.ModelProto:
    """ResNet-50 v1.5: input ``input`` [1,3,H,W] float32, output ``logits`` [1,1000].

    BatchNormalization nodes are kept separate (not folded into the convs); 53 Conv, 53 BN,
    16 residual Adds, 25.6 M parameters.
    """
    _check_image_size(image_size)
    g = GraphBuilder("resnet50", seed)
    y = _stem(g, "input", 64, "")
    c = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for b in range(blocks):
            stride = 2 if (b == 0 and stage > 1) else 1
            y, c = _bottleneck(g, y, c, width, stride, f"layer{stage}.{b}", gain=0.25)
    logits = g.classifier_head(y, c, NUM_CLASSES)
    return g.build(
        [("input", FLOAT, [1, 3, image_size, image_size])],
        [(logits, "logits", FLOAT, [1, NUM_CLASSES])],
        doc="ResNet-50 v1.5 (random weights), built by corepipe.zoo",
    )


# -------------------------------------------------------------------------- DenseNet-121
def densenet121(image_size: int = 224, seed: int = 0) -> onnx.ModelProto:
    """DenseNet-121: blocks [6,12,24,16], growth 32, bn_size 4, compression 0.5.

    Like torchvision's export, every dense layer reads the Concat of *all* earlier feature maps
    of its block, so each map is read by every later layer of the block (long-lived tensors).
    Input ``input`` [1,3,H,W], output ``logits`` [1,1000].
    """
    _check_image_size(image_size)
    growth, bn_size = 32, 4
    g = GraphBuilder("densenet121", seed)
    y = _stem(g, "input", 64, "features.")
    c = 64
    blocks = (6, 12, 24, 16)
    for bi, n_layers in enumerate(blocks, start=1):
        feats, c_feats = [y], c
        for li in range(1, n_layers + 1):
            p = f"features.denseblock{bi}.denselayer{li}"
            x = feats[0] if len(feats) == 1 else g.node("Concat", feats, p, axis=1)
            h = g.relu(g.bn(x, c_feats, f"{p}.norm1"), p)
            h = g.conv(h, c_feats, bn_size * growth, 1, f"{p}.conv1", pad=0)
            h = g.relu(g.bn(h, bn_size * growth, f"{p}.norm2"), p)
            h = g.conv(h, bn_size * growth, growth, 3, f"{p}.conv2")
            feats.append(h)
            c_feats += growth
        y = g.node("Concat", feats, f"features.denseblock{bi}", axis=1)
        c = c_feats
        if bi != len(blocks):
            p = f"features.transition{bi}"
            y = g.relu(g.bn(y, c, f"{p}.norm"), p)
            y = g.conv(y, c, c // 2, 1, f"{p}.conv", pad=0)
            y = g.node("AveragePool", [y], p, kernel_shape=[2, 2], strides=[2, 2])
            c //= 2
    y = g.relu(g.bn(y, c, "features.norm5"), "features")
    logits = g.classifier_head(y, c, NUM_CLASSES)
    return g.build(
        [("input", FLOAT, [1, 3, image_size, image_size])],
        [(logits, "logits", FLOAT, [1, NUM_CLASSES])],
        doc="DenseNet-121 (random weights), built by corepipe.zoo",
    )


# ----------------------------------------------------------------- GoogLeNet / Inception v1
def _basic_conv(
    g: GraphBuilder, x: str, c_in: int, c_out: int, k: int, prefix: str, stride: int = 1
) -> str:
    """Conv (no bias) -> BN (eps 1e-3) -> ReLU, as torchvision's BasicConv2d."""
    y = g.conv(x, c_in, c_out, k, f"{prefix}.conv", stride=stride)
    return g.relu(g.bn(y, c_out, f"{prefix}.bn", eps=1e-3), prefix)


def _maxpool(g: GraphBuilder, x: str, k: int, s: int, pad: int, prefix: str) -> str:
    return g.node(
        "MaxPool",
        [x],
        prefix,
        kernel_shape=[k, k],
        strides=[s, s],
        pads=[pad] * 4,
        ceil_mode=1,
    )


# (c_in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) from the GoogLeNet paper, table 1.
_INCEPTION = {
    "3a": (192, 64, 96, 128, 16, 32, 32),
    "3b": (256, 128, 128, 192, 32, 96, 64),
    "4a": (480, 192, 96, 208, 16, 48, 64),
    "4b": (512, 160, 112, 224, 24, 64, 64),
    "4c": (512, 128, 128, 256, 24, 64, 64),
    "4d": (512, 112, 144, 288, 32, 64, 64),
    "4e": (528, 256, 160, 320, 32, 128, 128),
    "5a": (832, 256, 160, 320, 32, 128, 128),
    "5b": (832, 384, 192, 384, 48, 128, 128),
}


def _inception(g: GraphBuilder, x: str, name: str) -> tuple[str, int]:
    c_in, c1, r3, c3, r5, c5, pp = _INCEPTION[name]
    p = f"inception{name}"
    b1 = _basic_conv(g, x, c_in, c1, 1, f"{p}.branch1")
    b2 = _basic_conv(g, x, c_in, r3, 1, f"{p}.branch2.0")
    b2 = _basic_conv(g, b2, r3, c3, 3, f"{p}.branch2.1")
    b3 = _basic_conv(g, x, c_in, r5, 1, f"{p}.branch3.0")
    b3 = _basic_conv(g, b3, r5, c5, 5, f"{p}.branch3.1")
    b4 = _maxpool(g, x, 3, 1, 1, f"{p}.branch4")
    b4 = _basic_conv(g, b4, c_in, pp, 1, f"{p}.branch4.1")
    return g.node("Concat", [b1, b2, b3, b4], p, axis=1), c1 + c3 + c5 + pp


def inception_v1(image_size: int = 224, seed: int = 0) -> onnx.ModelProto:
    """GoogLeNet (Inception v1): 9 inception modules of 4 concatenated branches, no aux heads.

    Uses the paper's 5x5 branch and torchvision's BatchNorm in place of LRN. Input ``input``
    [1,3,H,W], output ``logits`` [1,1000].
    """
    _check_image_size(image_size)
    g = GraphBuilder("inception_v1", seed)
    y = _basic_conv(g, "input", 3, 64, 7, "conv1", stride=2)
    y = _maxpool(g, y, 3, 2, 0, "maxpool1")
    y = _basic_conv(g, y, 64, 64, 1, "conv2")
    y = _basic_conv(g, y, 64, 192, 3, "conv3")
    y = _maxpool(g, y, 3, 2, 0, "maxpool2")
    c = 192
    for name in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"):
        if name == "4a":
            y = _maxpool(g, y, 3, 2, 0, "maxpool3")
        elif name == "5a":
            y = _maxpool(g, y, 2, 2, 0, "maxpool4")
        y, c = _inception(g, y, name)
    logits = g.classifier_head(y, c, NUM_CLASSES)
    return g.build(
        [("input", FLOAT, [1, 3, image_size, image_size])],
        [(logits, "logits", FLOAT, [1, NUM_CLASSES])],
        doc="GoogLeNet / Inception v1 (random weights), built by corepipe.zoo",
    )
