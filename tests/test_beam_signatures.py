"""The memoized reading of DoFn signatures (pipeline/runners/signatures.py) answers what
Beam's own reading answers, and forgets what it should."""

from __future__ import annotations

import gc
import weakref

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import core, userstate
from apache_beam.transforms.userstate import BagStateSpec, TimerSpec, on_timer
from apache_beam.typehints.typecheck import TypeCheckWrapperDoFn

from pipeline.inference.dofn import RunInferenceFn
from pipeline.runners import signatures
from pipeline.runners.launch import make_pipeline

BAG = BagStateSpec("seen", VarIntCoder())
TIMER = TimerSpec("flush", userstate.TimeDomain.WATERMARK)


class _Stateful(beam.DoFn):
    def process(self, item, seen=beam.DoFn.StateParam(BAG), flush=beam.DoFn.TimerParam(TIMER)):
        seen.add(item[1])
        flush.set(0)

    @on_timer(TIMER)
    def flushed(self, seen=beam.DoFn.StateParam(BAG)):
        yield sorted(seen.read())


class _Plain(beam.DoFn):
    def process(self, item, scale=2):
        yield item * scale


class _Delegating(beam.DoFn):
    """A DoFn whose instance holds a method of another stateful DoFn (not its class's)."""

    def __init__(self):
        self.borrowed = _Stateful().process

    def process(self, item):
        yield item


def _memoized():
    signatures.memoize()
    return signatures._originals["specs"], signatures._originals["args"]


def test_specs_and_arguments_are_beams_for_stateful_plain_wrapped_and_delegating_dofns():
    beams_specs, beams_args = _memoized()
    dofns = [
        _Stateful(),
        _Plain(),
        _Delegating(),
        beam.Map(lambda x, t=beam.DoFn.TimestampParam: x).fn,
        beam.FlatMap(lambda x, w=beam.DoFn.WindowParam: [x]).fn,
        RunInferenceFn.__new__(RunInferenceFn),
    ]
    for dofn in dofns * 2:  # the second pass is answered from the caches
        assert userstate.get_dofn_specs(dofn) == beams_specs(dofn), dofn
        for name in ("process", "setup", "start_bundle", "finish_bundle"):
            if hasattr(dofn, name):
                method = getattr(dofn, name)
                assert core.get_function_args_defaults(method) == beams_args(method), (dofn, name)
    assert userstate.is_stateful_dofn(_Stateful()) and not userstate.is_stateful_dofn(_Plain())
    assert userstate.get_dofn_specs(_Stateful()) == ({BAG}, {TIMER})
    assert userstate.get_dofn_specs(_Delegating()) == ({BAG}, {TIMER})  # its borrowed method counts
    assert type(_Stateful()) in signatures._specs_cache and _Delegating not in signatures._specs_cache
    # every Map of a plain function shares one entry; a type-checking wrapper reads its DoFn's
    assert signatures._specs_key(dofns[3]) == signatures._specs_key(beam.Map(len).fn) == {"process"}
    assert (
        signatures._specs_key(
            TypeCheckWrapperDoFn(_Stateful(), beam.typehints.decorators.IOTypeHints.empty())
        )
        is None
    )
    wrapped = TypeCheckWrapperDoFn(_Stateful(), beam.typehints.decorators.IOTypeHints.empty())
    assert userstate.get_dofn_specs(wrapped) == beams_specs(wrapped)


def test_replaced_default_values_are_read_again_and_freed_functions_leave_the_cache():
    _memoized()

    def scaled(item, scale=2):
        return item * scale

    assert core.get_function_args_defaults(scaled) == (["item", "scale"], [2])
    scaled.__defaults__ = (3,)
    assert core.get_function_args_defaults(scaled) == (["item", "scale"], [3])
    args, defaults = core.get_function_args_defaults(scaled)
    defaults.append("changed by a caller")  # each caller gets its own lists
    assert core.get_function_args_defaults(scaled) == (["item", "scale"], [3])
    assert scaled in signatures._args_cache
    freed = weakref.ref(scaled)
    del scaled, args, defaults
    gc.collect()
    assert freed() is None  # the cache did not keep the function alive


def test_a_stateful_pipeline_still_keeps_its_state_under_the_caches():
    _memoized()
    with make_pipeline(beam.options.pipeline_options.PipelineOptions()) as p:
        out = (
            p
            | beam.Create([3, 1, 2])
            | beam.ParDo(_Plain())  # a cached plain DoFn beside a stateful one
            | beam.Map(lambda value: ("key", value))
            | beam.ParDo(_Stateful())
        )
        assert_that(out, equal_to([[2, 4, 6]]))
