"""TensorFlow ops that turn base64 JPEG/PNG strings into model-ready image tensors.

They run inside the tf.Transform graph, so the same decoding happens in training and in
the exported model; nothing outside TensorFlow touches the pixels.
"""

import tensorflow as tf

from transforms.schema import ImageSpec


def decode_base64_images(encoded: tf.Tensor, spec: ImageSpec) -> tf.Tensor:
    """[batch] standard-base64 strings -> [batch, H, W, C] float32 in [0, 1].

    An empty string (a missing optional image) becomes an all-zero image. A string that is
    not a JPEG or PNG raises `tf.errors.InvalidArgumentError`; the prediction pipeline
    checks images before they get here and isolates any record that still fails.
    """
    # tf.io.decode_base64 reads the web-safe alphabet; records carry the standard one.
    websafe = tf.strings.regex_replace(encoded, r"\+", "-")
    websafe = tf.strings.regex_replace(websafe, "/", "_")
    websafe = tf.strings.regex_replace(websafe, r"\s", "")
    image_bytes = tf.io.decode_base64(websafe)
    shape = [spec.height, spec.width, spec.channels]

    def decode_one(data):
        def decode():
            image = tf.io.decode_image(data, channels=spec.channels, expand_animations=False)
            image = tf.image.resize(image, [spec.height, spec.width])
            return tf.ensure_shape(image / 255.0, shape)

        return tf.cond(tf.strings.length(data) > 0, decode, lambda: tf.zeros(shape))

    return tf.map_fn(decode_one, image_bytes, fn_output_signature=tf.TensorSpec(shape, tf.float32))
