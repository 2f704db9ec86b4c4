"""The Keras click model (tabular tower + small convolutional image tower) and its training."""

# Image towers the trainer can build (pipeline.trainer.model); here so the CLI can list them
# without importing Keras.
IMAGE_TOWERS = ("small", "mobilenet_v2")
