"""Batch normalization folded into the convolution before it, for the exported model.

At inference a BatchNormalization layer is a fixed per-channel affine map, so after a
convolution (no activation between them) it folds into that convolution's kernel and bias:
w' = w * gamma / sqrt(var + eps), b' = beta + (b - mean) * gamma / sqrt(var + eps). The
outputs stay the same (to float rounding), and the graph loses an op per layer that
TensorFlow's oneDNN path could fuse only in fp32: under the bf16 rewrite a convolution, its
batch norm and its ReLU6 ran as three ops, the last in a slow element-wise kernel, and
bf16 was slower than fp32 on MobileNetV2. Folded, Conv2D + BiasAdd + Relu6 fuse in both
precisions (docs/precision.md has the figures). Training is untouched: only the exported
copy is folded.
"""

from __future__ import annotations

import numpy as np
import tf_keras as keras

_CONVOLUTIONS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def fold_batch_norms(model: keras.Model) -> keras.Model:
    """A copy of `model` (functional, nested models too) with each BatchNormalization that is
    the only consumer of a convolution without activation folded into it; `model` itself if
    it has none."""
    pairs = _foldable(model)
    nested = [layer for layer in model.layers if _is_functional(layer)]
    if not pairs and not nested:
        return model
    convolutions = {conv.name: model.get_layer(norm) for norm, conv in pairs.items()}
    folded_nested = {layer.name: fold_batch_norms(layer) for layer in nested}

    def clone(layer):
        if layer.name in folded_nested:
            return folded_nested[layer.name]
        if layer.name in pairs:
            return keras.layers.Activation("linear", name=layer.name)  # an identity: no op in the graph
        config = layer.get_config()
        if layer.name in convolutions:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    folded = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        target = folded.get_layer(layer.name)
        if layer.name in convolutions:
            target.set_weights(_folded_weights(layer, convolutions[layer.name]))
        elif layer.name not in pairs and layer.name not in folded_nested and layer.weights:
            target.set_weights(layer.get_weights())
    return folded


def _is_functional(layer) -> bool:
    return isinstance(layer, keras.Model) and getattr(layer, "_is_graph_network", False)


def _foldable(model: keras.Model) -> dict:
    """BatchNormalization layer name -> the convolution it can fold into."""
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or len(layer.inbound_nodes) != 1:
            continue
        conv = layer.inbound_nodes[0].inbound_layers
        if (
            isinstance(conv, _CONVOLUTIONS)
            and len(conv.outbound_nodes) == 1
            and len(conv.inbound_nodes) == 1
            and conv.activation is keras.activations.linear
            and conv.data_format == "channels_last"
            and list(np.atleast_1d(layer.axis)) in ([-1], [3])
        ):
            pairs[layer.name] = conv
    return pairs


def _folded_weights(conv, norm_layer) -> list[np.ndarray]:
    weights = conv.get_weights()
    kernel = weights[0]
    bias = weights[1] if conv.use_bias else 0.0
    values = dict(
        zip(("gamma", "beta", "moving_mean", "moving_variance"), _norm_weights(norm_layer), strict=True)
    )
    scale = values["gamma"] / np.sqrt(values["moving_variance"] + norm_layer.epsilon)
    if isinstance(conv, keras.layers.DepthwiseConv2D):  # kernel [h, w, in, multiplier]: channel = in * m + j
        kernel = kernel * scale.reshape(1, 1, kernel.shape[2], kernel.shape[3])
    else:  # kernel [h, w, in, out]
        kernel = kernel * scale.reshape(1, 1, 1, -1)
    bias = values["beta"] + (bias - values["moving_mean"]) * scale
    return [kernel.astype(weights[0].dtype), np.asarray(bias, dtype=weights[0].dtype)]


def _norm_weights(layer) -> list[np.ndarray]:
    """gamma, beta, mean, variance (ones / zeros where the layer has no scale or center)."""
    weights = iter(layer.get_weights())
    channels = layer.moving_mean.shape[-1]
    gamma = next(weights) if layer.scale else np.ones(channels, np.float32)
    beta = next(weights) if layer.center else np.zeros(channels, np.float32)
    return [gamma, beta, next(weights), next(weights)]
