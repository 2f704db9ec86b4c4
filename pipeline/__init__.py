"""Beam pipelines of adpredict: reading ad records, validating them, batch inference with
the all-in-one SavedModel, and writing predictions, errors and the run manifest."""

# Namespace of every Beam counter adpredict reports (records_read, predictions_written, ...).
METRICS_NAMESPACE = "adpredict"
