"""When TensorFlow rejects a record: what it said, in one line, and the record's error record."""

from __future__ import annotations

import logging
import re

import tensorflow as tf

from pipeline import errors
from pipeline.blocks import RecordBlock, RecordLayout

# Errors that mean "this batch needs less memory", not "the model rejects a record".
OUT_OF_MEMORY = (tf.errors.ResourceExhaustedError, MemoryError)


# Lines of a TensorFlow error that are not the op's message: the header, where the node
# was defined, and the node tags after the message.
_TF_NOISE_LINES = ("Graph execution error:", "Detected at node ", "<stack traces unavailable>", "Node: ")
_TF_NODE_TAGS = re.compile(r"\s*\[\[\{\{.*?\}\}\]\]|\s*\[Op:[^\]]*\]|\{\{[^}]*\}\}")
_IMAGE_OPS = re.compile(r"decode_?(image|jpeg|png|gif|bmp)|\b(jpeg|png|gif|bmp)\b", re.IGNORECASE)


def tf_error_reason(error: BaseException, limit: int = 300) -> str:
    """What the failing op said, e.g. "jpeg::Uncompress failed. Invalid JPEG data or crop
    window.", without the "Graph execution error:" header, the node's definition
    traceback and node tags that come first in TensorFlow's message."""
    text = str(getattr(error, "message", None) or error)
    kept = []
    for line in text.splitlines():
        if not line.strip() or line[0].isspace() or line.startswith(_TF_NOISE_LINES):
            continue  # traceback frames and "\t [[{{node ...}}]]" are indented
        line = _TF_NODE_TAGS.sub("", line).strip()
        if line:
            kept.append(line)
    reason = "; ".join(kept).rstrip(".") or text.strip() or type(error).__name__
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def inference_error(block: RecordBlock, row: int, key, error: BaseException, layout: RecordLayout) -> dict:
    """The error record of one row the model failed on alone, with what TensorFlow said and
    what to check: the image field when an image decoder failed."""
    record = block.batch.slice(row, 1).to_pylist()[0]
    line = record.pop("__line__")
    reason = tf_error_reason(error)
    field = None
    if isinstance(error, OUT_OF_MEMORY):
        message = (
            f"the model ran out of memory scoring this record alone (batch size 1): {reason}; "
            "check it for oversized values (e.g. a huge image) or give the workers more memory"
        )
    else:
        image_fields = [f.name for f in layout.fields if f.type == "image"]
        text = str(getattr(error, "message", None) or error)
        if len(image_fields) == 1 and _IMAGE_OPS.search(text):
            field = image_fields[0]
            advice = (
                f"field {field!r} passed the JPEG/PNG signature check but does not decode; "
                "check its image bytes"
            )
        else:
            advice = "check its field values against the schema"
        message = f"the model rejected this record alone: {reason}; {advice}"
    logging.warning("record %s:%s failed inference: %s", block.source, line, message)
    return errors.error_record(
        source=f"{block.source}:{line}",
        code=errors.INFERENCE_FAILED,
        message=message,
        field=field,
        key=key,
        instance={k: v for k, v in record.items() if v is not None},
    )
