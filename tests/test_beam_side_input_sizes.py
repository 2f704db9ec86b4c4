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


def test_on_another_beam_version_no_patch_is_applied_and_a_warning_says_which(monkeypatch, caplog):
    import apache_beam
    from apache_beam.internal import cloudpickle_pickler
    from apache_beam.runners.worker import statesampler

    from pipeline.io.beam_fixes import PATCHED_BEAM_VERSION, beam_patchable
    from pipeline.runners import pickling, signatures, state_sampler

    assert apache_beam.__version__ == PATCHED_BEAM_VERSION and beam_patchable("anything")
    monkeypatch.setattr(apache_beam, "__version__", "9.9.0")
    for module in (side_input_sizes, signatures, state_sampler, pickling):
        monkeypatch.setattr(module, "_originals", {})  # as in a fresh process
    sizing, sampler, compression = (
        statecache.get_deep_size,
        statesampler.StateSampler,
        cloudpickle_pickler.bz2,
    )
    with caplog.at_level("WARNING"):
        side_input_sizes.install()
        signatures.memoize()
        state_sampler.shorten()
        assert not pickling.install()
    assert statecache.get_deep_size is sizing and statesampler.StateSampler is sampler
    assert cloudpickle_pickler.bz2 is compression
    assert not any(m._originals for m in (side_input_sizes, signatures, state_sampler, pickling))
    assert [r.getMessage() for r in caplog.records] == [
        f"Beam 9.9.0: the side-input sizing of pipeline/runners/side_input_sizes.py not applied (written for Beam {PATCHED_BEAM_VERSION})",
        f"Beam 9.9.0: the signature caches of pipeline/runners/signatures.py not applied (written for Beam {PATCHED_BEAM_VERSION})",
        f"Beam 9.9.0: the state sampler period of pipeline/runners/state_sampler.py not applied (written for Beam {PATCHED_BEAM_VERSION})",
        f"Beam 9.9.0: the zlib pickles of pipeline/runners/pickling.py not applied (written for Beam {PATCHED_BEAM_VERSION})",
    ]
    assert not beam_patchable()  # unnamed: no warning
    assert len(caplog.records) == 4
