"""Beam's state sampler at a 10 ms period (pipeline/runners/state_sampler.py): the bundles of
a local run sample at it, and a long bundle's end no longer waits up to 200 ms for it."""

from __future__ import annotations

import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.worker import statesampler
from apache_beam.utils.counters import CounterFactory

from pipeline.runners import state_sampler
from pipeline.runners.launch import make_pipeline


class _SamplingPeriodFn(beam.DoFn):
    def process(self, element):
        yield statesampler.get_current_tracker().sampling_period_ms


def test_the_bundles_of_a_local_run_sample_every_10_ms():
    with make_pipeline(PipelineOptions([])) as p:
        periods = p | beam.Create([1, 2]) | beam.ParDo(_SamplingPeriodFn())
        beam.testing.util.assert_that(periods, beam.testing.util.equal_to([10, 10]))


def test_a_bundle_of_over_a_second_ends_within_the_period():
    state_sampler.shorten()
    sampler = statesampler.StateSampler("fnapi-step-test", CounterFactory())
    assert sampler.sampling_period_ms == state_sampler.SAMPLING_PERIOD_MS == 10
    sampler.start()
    time.sleep(1.2)  # Beam's own sampler would now sleep 200 ms at a time
    started = time.perf_counter()
    sampler.stop()
    assert time.perf_counter() - started < 0.05
    beams = state_sampler._originals["StateSampler"]("fnapi-step-test", CounterFactory())
    assert beams.sampling_period_ms == 200  # what is replaced: Beam's default
