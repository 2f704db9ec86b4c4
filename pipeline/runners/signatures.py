"""Beam's reading of DoFn method signatures, memoized.

Beam looks for state and timer parameters by asking `inspect.signature` about every method
of a DoFn (`dir(dofn)`: some 30), each time: four times per ParDo when the pipeline is
translated, and again when each bundle's operations are built, on DoFns freshly unpickled
for the bundle. A predict run (65 ParDos, 24 stages) made 16,000 such calls: 0.22 s of its
1.05 s on 1,000 records (AMD EPYC, 2026-12-05). Two caches answer instead:

- `get_dofn_specs` (the state and timer specs) per DoFn class and the names of the class's
  attributes its instance hides, for a DoFn whose methods are all its class's: no bound
  method among the instance's attributes, and no method read through an `_inspect_*` hook
  (Beam's type-checking wrapper reads its wrapped DoFn's that way: not cached). Beam's
  `Map`/`FlatMap` DoFn hides `process` behind the user's function, which the reading then
  skips, so every such DoFn of a plain function has the same specs.
- `get_function_args_defaults` (argument names and default values) per function, weakly (a
  pipeline's lambdas can still be freed), and by whether it was bound; read again if the
  function's default values were replaced since.

Anything else goes to Beam's own reading unchanged. Applied to the exact Beam version it was
written against; on another it does nothing, with a warning.
"""

from __future__ import annotations

import types
import weakref

from pipeline.io.beam_fixes import beam_patchable

_args_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_specs_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_class_facts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_originals: dict = {}


def _args_defaults(f):
    """`get_function_args_defaults(f)`: (argument names, default values), from the cache when
    `f` is a plain function or a method bound to one."""
    bound = isinstance(f, types.MethodType)
    function = f.__func__ if bound else f
    if type(function) is not types.FunctionType:
        return _originals["args"](f)
    entries = _args_cache.get(function)
    found = entries.get(bound) if entries is not None else None
    if found is not None and found[0] is function.__defaults__ and found[1] is function.__kwdefaults__:
        return list(found[2]), list(found[3])  # callers get their own lists, as from Beam
    args, defaults = _originals["args"](f)
    _args_cache.setdefault(function, {})[bound] = (
        function.__defaults__,
        function.__kwdefaults__,
        tuple(args),
        tuple(defaults),
    )
    return args, defaults


def _hooked_methods(cls) -> frozenset | None:
    """The methods of `cls` whose arguments Beam reads through an `_inspect_<name>` hook (so
    from the instance, not the class); None if `cls` answers attribute lookups itself."""
    found = _class_facts.get(cls)
    if found is None:
        names = dir(cls)
        hooked = frozenset(
            name[len("_inspect_") :]
            for name in names
            if name.startswith("_inspect_") and callable(getattr(cls, name[len("_inspect_") :], None))
        )
        own_lookup = "__getattr__" in names or cls.__getattribute__ is not object.__getattribute__
        found = _class_facts[cls] = (None if own_lookup else hooked,)
    return found[0]


def _specs_key(dofn):
    """What `get_dofn_specs(dofn)` depends on, when that is its class and which of the class's
    attributes the instance hides; None when it depends on more (a bound method the instance
    holds, a hooked method it does not hide, a class with its own `__getattr__`).

    Only bound methods are read (`types.MethodType`); an instance attribute that is not one
    (Beam's `Map` stores the user's function as `process`) hides the class's method of that
    name from the reading, so the hidden names are part of the key.
    """
    cls = type(dofn)
    hooked = _hooked_methods(cls)
    if hooked is None:
        return None
    own = getattr(dofn, "__dict__", {})
    if any(isinstance(value, types.MethodType) for value in own.values()):
        return None
    if any(name not in own for name in hooked):
        return None
    return frozenset(name for name in own if callable(getattr(cls, name, None)))  # data never counts


def _dofn_specs(dofn):
    """`get_dofn_specs(dofn)`: (state specs, timer specs), cached per class and hidden names."""
    key = _specs_key(dofn)
    if key is None:
        return _originals["specs"](dofn)
    per_class = _specs_cache.setdefault(type(dofn), {})
    found = per_class.get(key)
    if found is None:
        found = per_class[key] = _originals["specs"](dofn)
    return set(found[0]), set(found[1])


def memoize() -> None:
    """Installs both caches (once) where Beam's DoFn introspection calls them."""
    if _originals:
        return
    from apache_beam.transforms import core, userstate

    if not beam_patchable("the signature caches of pipeline/runners/signatures.py"):
        return
    _originals["args"] = core.get_function_args_defaults
    _originals["specs"] = userstate.get_dofn_specs
    core.get_function_args_defaults = _args_defaults
    userstate.get_dofn_specs = _dofn_specs
