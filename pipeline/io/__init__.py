"""Where records come from and predictions go: one module per format, found here.

A format is found by its name (`--input_format`, `--output_format`), a file's extension
(`.jsonl`, `.csv`, `.tfrecord`, `.parquet`, each also `.gz` but Parquet) or the `bq://`
scheme of a BigQuery table. Adding a file format is one new module with a `FORMAT` and one
line in `FILE_FORMATS`.
"""

from __future__ import annotations

from pipeline.io import base, beam_fixes, csv, jsonl, parquet, tfrecord
from pipeline.run_contract import InputError

beam_fixes.apply()  # S3 and Azure filesystem bugs of Beam, wherever pipeline.io is imported

FILE_FORMATS: dict[str, base.FileFormat] = {
    f.name: f for f in (jsonl.FORMAT, csv.FORMAT, tfrecord.FORMAT, parquet.FORMAT)
}
BIGQUERY = "bigquery"
BIGQUERY_SCHEME = "bq://"
INPUT_FORMATS = tuple(FILE_FORMATS)
OUTPUT_FORMATS = (*FILE_FORMATS, BIGQUERY)
COMPRESSED_SUFFIX = ".gz"


def describe_formats() -> str:
    """Every format and its file name endings, for error messages."""
    parts = [f"{name} ({', '.join(f.extensions)})" for name, f in FILE_FORMATS.items()]
    return ", ".join(parts) + f"; files may end in {COMPRESSED_SUFFIX} (not Parquet)"


def is_bigquery(uri: str) -> bool:
    return uri.startswith(BIGQUERY_SCHEME)


def format_for(path: str, declared: str | None = None) -> base.FileFormat:
    """The file format of `path`: `declared`, else told from its name."""
    if declared:
        if declared not in FILE_FORMATS:
            raise InputError(f"--input_format must be one of {', '.join(FILE_FORMATS)}, got {declared!r}")
        return FILE_FORMATS[declared]
    name = path[: -len(COMPRESSED_SUFFIX)] if path.endswith(COMPRESSED_SUFFIX) else path
    for fmt in FILE_FORMATS.values():
        if name.lower().endswith(fmt.extensions):
            return fmt
    raise InputError(
        f"cannot tell the format of {path!r} from its name; name it after its format or pass "
        f"--input_format. Formats: {describe_formats()}"
    )


def read_stream(stream, source: str, layout, input_format: str | None = None, block_bytes: int | None = None):
    """RecordBlocks and error records of one open file (outside Beam: tools, benchmarks, tests)."""
    from pipeline.io.text import DEFAULT_BLOCK_BYTES

    return format_for(source, input_format).read(stream, source, layout, block_bytes or DEFAULT_BLOCK_BYTES)


def blocks_and_errors(items):
    """Splits what a reader yields into (blocks, error records)."""
    blocks, failures = [], []
    for item in items:
        (failures if isinstance(item, dict) else blocks).append(item)
    return blocks, failures
