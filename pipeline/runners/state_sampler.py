"""Beam's state sampler at a 10 ms period, so that a long bundle does not end in a sleep.

Each bundle a worker runs starts a sampler thread that adds up the time spent in each step
(Beam's msecs counters). The thread sleeps between samples, from 1/100 of the sampling
period up to the whole period, 200 ms by default, reached after about a second; and the
bundle's end waits for the thread to wake (`stop()` joins it: Beam's comment says it may
wait up to a period). So a bundle of over a second ended 0 to 200 ms late, at random. A
local run scores in one such bundle: the end of a 1M-record light run waited 0.32-0.45 s
after its last block instead of 0.23-0.24 s, and the demo run's fixed cost carried the same
random wait (AMD EPYC, 2026-12-05).

At 10 ms the sampler wakes 100 times a second (a few microseconds each, without the GIL)
and the bundle's end waits 10 ms at most. The counters it feeds still add up each step's
time, sampled 20 times as finely. Local runs only: `make_pipeline` installs it in the
process that runs the bundles. Applied to the exact Beam version it was written against;
on another it does nothing, with a warning.
"""

from __future__ import annotations

from pipeline.io.beam_fixes import beam_patchable

SAMPLING_PERIOD_MS = 10
_originals: dict = {}


def shorten() -> None:
    """Makes the samplers Beam's bundle processors create sample every SAMPLING_PERIOD_MS
    (once per process)."""
    if _originals:
        return
    from apache_beam.runners.worker import statesampler

    if not beam_patchable("the state sampler period of pipeline/runners/state_sampler.py"):
        return
    beams = statesampler.StateSampler

    class PromptStateSampler(beams):
        """Beam's StateSampler, with SAMPLING_PERIOD_MS when no period is given."""

        def __init__(self, prefix, counter_factory, sampling_period_ms=SAMPLING_PERIOD_MS):
            super().__init__(prefix, counter_factory, sampling_period_ms)

    _originals["StateSampler"] = beams
    # BundleProcessor creates its sampler through the module's attribute, read at each bundle.
    statesampler.StateSampler = PromptStateSampler
