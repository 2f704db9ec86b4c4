"""Beam's pickles as zlib while a run whose steps all run here is built and run
(pipeline/runners/pickling.py); bz2, as Beam's, wherever another process may read them."""

from __future__ import annotations

import base64
import threading

import apache_beam as beam
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from pipeline.runners.launch import make_pipeline
from pipeline.runners.pickling import BZ2_MAGIC, install, zlib_pickles

_ZLIB_LEVEL_1 = b"\x78\x01"  # the header zlib.compress(data, 1) writes


def _compressed(fn) -> bytes:
    return base64.b64decode(pickler.dumps(fn))[:3]


class _Scaled(beam.DoFn):
    def __init__(self, factor):
        self.factor = factor

    def process(self, element):
        yield element * self.factor


def test_a_local_run_pickles_with_zlib_and_runs():
    options = PipelineOptions([])
    assert _compressed(_Scaled(2)) == BZ2_MAGIC  # Beam's own, outside the scope
    with zlib_pickles(options):
        assert _compressed(_Scaled(2))[:2] == _ZLIB_LEVEL_1
        with make_pipeline(options) as p:
            scaled = p | beam.Create([1, 2, 3]) | beam.ParDo(_Scaled(10))
            assert_that(scaled, equal_to([10, 20, 30]))
    assert _compressed(_Scaled(2)) == BZ2_MAGIC  # and again after it


def test_runs_whose_steps_run_in_other_processes_keep_bz2():
    for argv in (
        ["--runner", "DataflowRunner"],
        ["--direct_running_mode", "multi_processing"],
        ["--runner", "DaskRunner"],
        ["--no_wait_until_finish"],
    ):
        with zlib_pickles(PipelineOptions(argv)):
            assert _compressed(_Scaled(2)) == BZ2_MAGIC, argv


def test_either_kind_loads_inside_and_outside_the_scope():
    bz2_pickle = pickler.dumps(_Scaled(3))
    with zlib_pickles(PipelineOptions([])):
        zlib_pickle = pickler.dumps(_Scaled(4))
        assert pickler.loads(bz2_pickle).factor == 3
    assert pickler.loads(zlib_pickle).factor == 4


def test_another_thread_keeps_bz2_during_the_scope():
    seen = []
    with zlib_pickles(PipelineOptions([])):
        thread = threading.Thread(target=lambda: seen.append(_compressed(_Scaled(2))))
        thread.start()
        thread.join()
        assert _compressed(_Scaled(2))[:2] == _ZLIB_LEVEL_1
    assert seen == [BZ2_MAGIC]


def test_the_thread_that_builds_a_stage_pickles_with_zlib():
    """Beam pickles a stage's DoFns again on that thread and loads them at once, in-process."""
    assert install()
    seen = {}
    for name in ("ExecutionTreeCreator_0", "some-other-thread"):
        thread = threading.Thread(target=lambda n=name: seen.update({n: _compressed(_Scaled(2))}), name=name)
        thread.start()
        thread.join()
    assert seen["ExecutionTreeCreator_0"][:2] == _ZLIB_LEVEL_1
    assert seen["some-other-thread"] == BZ2_MAGIC
