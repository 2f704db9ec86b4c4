"""Batch inference with an all-in-one SavedModel, loaded once per worker process.

model.py      LoadedModel (one per process) and ModelConfig (what a run scores with)
tensors.py    Arrow columns -> the signature's tensors, no Python loop per record
batching.py   a block cut into model calls: batch size, long lists, bytes of creatives
failures.py   what TensorFlow said about a record it rejected, as an error record
dofn.py       RunInferenceFn: the inference step of adpredict's own pipelines
handler.py    RecordModelHandler: the same model for Beam's RunInference
tuning.py     the batch size timed at export
"""
