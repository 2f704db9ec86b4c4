"""`adpredict inspect MODEL_DIR`: what a model directory holds, and where else it would run.

    adpredict inspect demo_output/model            # readable report
    adpredict inspect demo_output/model --json     # the same content as one JSON object
    python -m pipeline.inspection demo_output/model

It lists the raw inputs (types, missing rules), outputs, every signature, the transform
fingerprint, the recorded batch size and training metrics, then checks portability, each
check PASS, WARN or FAIL with a one-line reason:

- TensorFlow only: a fresh `python -I -c` process that imports TensorFlow and nothing else
  (no tensorflow_transform, no adpredict) loads the SavedModel and calls `serving_default`
  on one example built from the description; ops plain TensorFlow lacks are named.
- BigQuery ML import (`CREATE MODEL ... MODEL_TYPE='TENSORFLOW'`), against its documented
  limits: at most 450 MB, about 250 MB in memory, core ops only, supported dtypes, no
  RaggedTensors.
- TF Serving / Vertex AI prebuilt containers: a `serving_default` signature whose inputs
  and outputs are batch-first, so the `{"instances": [...]}` row format can feed it.

    report.py   what the directory holds, as plain data (--json)
    probe.py    the TensorFlow-only child process
    checks.py   the portability checks
    text.py     the readable report
    command.py  the command line

This package imports neither Beam nor TensorFlow, so the command starts at once; all that
needs TensorFlow happens in that one child process. Exit codes: 0 when the directory was
inspected (whatever the checks say: read `checks` in --json), 2 when it is not a model
directory.
"""

from pipeline.inspection.command import main
from pipeline.inspection.report import inspect_model
from pipeline.inspection.text import format_report

__all__ = ["format_report", "inspect_model", "main"]
