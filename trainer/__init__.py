"""The Keras click model (tabular tower + small convolutional image tower) and its training."""
