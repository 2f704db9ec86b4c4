"""Beam's sizing of the side inputs it caches, without walking every loaded module each time.

A local run's worker keeps side-input values in an LRU cache weighed in bytes
(`statecache.StateCache`), and weighs each value with `objsize.get_deep_size`. By objsize's
default, every call first collects the globals of every module in `sys.modules` (thousands
once TensorFlow is imported) to leave them out of the count: 1 to 5 ms per call, for values
of a few hundred bytes. A predict run reads side inputs 22 times (the counts, the quality
verdict, the report's summaries), so 50 to 100 ms of its fixed cost went there (AMD EPYC,
2026-12-05).

Here the same traversal runs with `exclude_modules_globals=False`. A value is then weighed
with anything it references that a module also holds; the types, modules and functions
objsize leaves out by default stay left out. The weight only decides when the cache evicts,
so at worst a value that shares data with a module counts heavier and leaves the cache
sooner. Applied to the exact Beam version it was written against; on another it does
nothing, with a warning.
"""

from __future__ import annotations

from pipeline.io.beam_fixes import beam_patchable

_originals: dict = {}


def _deep_size(*objs) -> int:
    """Beam's `statecache.get_deep_size(*objs)`: the same size, traversal and filter, but
    no walk over every module's globals first."""
    import objsize
    from apache_beam.runners.worker import statecache

    return objsize.get_deep_size(
        *objs,
        get_size_func=statecache._size_func,
        get_referents_func=statecache._get_referents_func,
        filter_func=statecache._filter_func,
        exclude_modules_globals=False,
    )


def install() -> None:
    """Replaces Beam's sizing function (once) where its state cache calls it."""
    if _originals:
        return
    from apache_beam.runners.worker import statecache

    if not beam_patchable("the side-input sizing of pipeline/runners/side_input_sizes.py"):
        return
    _originals["get_deep_size"] = statecache.get_deep_size
    statecache.get_deep_size = _deep_size
