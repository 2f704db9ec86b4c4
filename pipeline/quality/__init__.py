"""The data-quality gate: every run's records and predictions profiled inside the pipeline,
compared with the training data (skew) and the previous night (drift), and a gross shift
kept from being published.

    profiling.py   Beam combiners: the run's profile, its outputs', duplicate keys
    thresholds.py  warn/block limits per check and per feature (flags, nightly config)
    references.py  what a run compares with: the model's training profile, the previous night
    gate.py        the comparison and the verdict run.json records (no Beam)

The profile format itself is the model directory's (`transforms/data_profile.py`); the step
that judges a run inside the pipeline is `pipeline.run.finalize.JudgeQuality`.
"""
