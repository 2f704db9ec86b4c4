"""Throughput benchmark of the predict pipeline against the bare model (`make bench`)."""
