"""Beam's weighing of cached side inputs, without its walk over every module
(pipeline/runners/side_input_sizes.py): the same weights for the values a run caches."""

from __future__ import annotations

import numpy as np
import objsize.traverse
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.worker import statecache

from pipeline.runners import side_input_sizes
from pipeline.runners.launch import make_pipeline

VALUES = [
    [],
    ["prediction.results"],
    [("read", 1000), ("predictions", 998), ("errors", 2)],
    [{"format_version": 1, "records": 1000, "features": {"age": {"counts": [1, 2, 3], "lo": 0.5}}}],
    [{"verdict": "pass", "examples": [["ad-1", 2]], "thresholds": {"drift": 0.2}}],
    [np.arange(1000, dtype=np.float32)],
]


def test_installed_by_make_pipeline_and_weighs_values_as_beam_does():
    make_pipeline(PipelineOptions([]))
    assert statecache.get_deep_size is side_input_sizes._deep_size
    beams = side_input_sizes._originals["get_deep_size"]
    for value in VALUES:
        assert side_input_sizes._deep_size(value) == beams(value), value
    assert side_input_sizes._deep_size(VALUES[-1]) > 4000  # the array's buffer counts


def test_a_value_is_weighed_without_walking_the_modules(monkeypatch):
    side_input_sizes.install()
    beams = side_input_sizes._originals["get_deep_size"]
    walks = []
    walk = objsize.traverse._iter_modules_globals
    monkeypatch.setattr(objsize.traverse, "_iter_modules_globals", lambda: walks.append(1) or walk())
    side_input_sizes._deep_size(["prediction.results"])
    assert walks == []
    beams(["prediction.results"])
    assert walks == [1]
