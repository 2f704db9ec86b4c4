"""adpredict's Beam pipelines, and what a Beam user takes into a pipeline of their own.

    from pipeline import ScoreRecords         # raw records -> predictions and error records
    from pipeline import RecordModelHandler   # a ModelHandler for Beam's RunInference

The layers of this package and the rule of imports between them: docs/architecture.md.
Both names are imported when first used, so `import pipeline.run_contract` (the trainer)
costs no Beam or TensorFlow import.
"""

from pipeline import startup as _startup

# `python -m pipeline.predict`: quiet TensorFlow's start-up before any module imports it.
_startup.begin_if_command_module()

__all__ = ["RecordModelHandler", "ScoreRecords"]

_PUBLIC = {"RecordModelHandler": "pipeline.inference.handler", "ScoreRecords": "pipeline.score"}


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
