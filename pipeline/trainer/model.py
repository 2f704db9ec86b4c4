"""The click model, built from the transformed feature spec alone.

Every 3-D transformed feature (an image, [H, W, C]) goes through an image tower: a small
two-layer CNN by default, or MobileNetV2 (`image_tower="mobilenet_v2"`, the size of a
production creative model; trained from scratch, no downloaded weights); every other
feature is a fixed-width float vector and joins the tabular tower. The
model never sees raw values: tf.Transform's outputs are its inputs, and the exported
SavedModel puts the transform graph in front of it.
"""

from __future__ import annotations

import tf_keras as keras

from pipeline.trainer import IMAGE_TOWERS
from transforms.model_contract import OUTPUT_NAME


def build_model(
    transformed_feature_spec: dict, label: str, learning_rate: float = 3e-3, image_tower: str = "small"
) -> keras.Model:
    if image_tower not in IMAGE_TOWERS:
        raise ValueError(f"unknown image tower {image_tower!r}; choose one of {', '.join(IMAGE_TOWERS)}")
    inputs, tabular, images = {}, [], []
    for name, spec in sorted(transformed_feature_spec.items()):
        if name == label:
            continue
        shape = list(spec.shape)
        inputs[name] = keras.Input(shape=shape, name=name, dtype="float32")
        (images if len(shape) == 3 else tabular).append(inputs[name])

    towers = []
    if tabular:
        x = keras.layers.Concatenate(name="tabular_features")(tabular) if len(tabular) > 1 else tabular[0]
        x = keras.layers.Dense(64, activation="relu", name="tabular_dense_1")(x)
        towers.append(keras.layers.Dense(32, activation="relu", name="tabular_dense_2")(x))
    for image in images:
        towers.append(_mobilenet_tower(image) if image_tower == "mobilenet_v2" else _image_tower(image))
    x = keras.layers.Concatenate(name="towers")(towers) if len(towers) > 1 else towers[0]
    x = keras.layers.Dense(32, activation="relu", name="head_dense")(x)
    output = keras.layers.Dense(1, activation="sigmoid", name=OUTPUT_NAME)(x)
    model = keras.Model(inputs=inputs, outputs=output)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc")],
    )
    return model


def _image_tower(image):
    name = image.name.split(":")[0]
    x = keras.layers.Conv2D(16, 3, activation="relu", padding="same", name=f"{name}_conv_1")(image)
    x = keras.layers.MaxPooling2D(2, name=f"{name}_pool_1")(x)
    x = keras.layers.Conv2D(32, 3, activation="relu", padding="same", name=f"{name}_conv_2")(x)
    x = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool_2")(x)
    return keras.layers.Dense(16, activation="relu", name=f"{name}_dense")(x)


def _mobilenet_tower(image):
    """MobileNetV2 (alpha 1.0) on the image; pixels arrive in [0, 1], MobileNet wants [-1, 1]."""
    name = image.name.split(":")[0]
    height, width, channels = image.shape[1:]
    x = keras.layers.Rescaling(2.0, offset=-1.0, name=f"{name}_to_mobilenet_range")(image)
    backbone = keras.applications.MobileNetV2(
        input_shape=(height, width, channels), include_top=False, weights=None, pooling="avg"
    )
    backbone._name = f"{name}_mobilenet_v2"
    x = backbone(x)
    return keras.layers.Dense(16, activation="relu", name=f"{name}_dense")(x)
