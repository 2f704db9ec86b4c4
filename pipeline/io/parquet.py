"""Parquet: already columnar, so row groups become record blocks directly.

In: each row group is read (only the layout's columns) and cast to the layout's types; a
column of the wrong type makes each affected row one `wrong_type` error, not a crash. A
file that is not Parquet is one error record naming it; a row group that cannot be decoded
is one error record naming the file, the row group and its rows, and reading goes on with
the next row group. Out: one column per prediction field.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import errors
from pipeline.blocks import conform
from pipeline.io import base

MAGIC = b"PAR1"


def read(
    stream,
    source: str,
    layout,
    block_bytes: int,
    row_groups: tuple[int, int] | None = None,
    first_row: int = 1,
):
    """Every row group of the file, or those in [first, end) of `row_groups`, rows numbered
    from `first_row`."""
    try:
        parquet_file = pq.ParquetFile(stream)
    except (pa.ArrowException, OSError) as e:
        if _is_empty(stream):  # no rows, as an empty file of any format
            return
        yield errors.error_record(
            source=f"{source}:0",
            code=errors.MALFORMED_RECORD,
            message=f"{source} is not a readable Parquet file ({e}); none of its rows could be read",
        )
        return
    present = set(parquet_file.schema_arrow.names)
    columns = [f.name for f in layout.all_fields if f.name in present]
    for group in range(*(row_groups or (0, parquet_file.num_row_groups))):
        rows = parquet_file.metadata.row_group(group).num_rows
        try:
            table = parquet_file.read_row_group(group, columns=columns)
        except (pa.ArrowException, OSError) as e:
            yield errors.error_record(
                source=f"{source}:{first_row}",
                code=errors.MALFORMED_RECORD,
                message=(
                    f"row group {group} of {source} (rows {first_row}-{first_row + rows - 1}) cannot be "
                    f"decoded: {str(e).splitlines()[0]}"
                ),
            )
            first_row += rows
            continue
        lines = np.arange(first_row, first_row + table.num_rows, dtype=np.int64)
        block, failures = conform(table, layout, source, lines)
        if block is not None and len(block):
            yield block
        yield from failures
        first_row += table.num_rows


def _is_empty(stream) -> bool:
    """Whether the file holds no byte at all (not even Parquet's magic)."""
    try:
        stream.seek(0)
        return not stream.read(1)
    except (OSError, ValueError):
        return False


def head_problem(head: bytes, layout) -> str | None:
    if not head or head.startswith(MAGIC):
        return None
    return f"it starts with {head[:8]!r}, not the Parquet magic {MAGIC!r}"


class WritePredictions(base.PredictionWriter):
    """ScoredBlocks -> sharded Parquet files `<prefix>-SSSSS-of-NNNNN`, a row group per block."""

    def expand(self, scored):
        columns = self.columns
        return (
            scored
            | "ToArrowTables" >> beam.Map(lambda block: base.scored_table(block, columns))
            | "WriteParquet"
            >> beam.io.WriteToParquetBatched(
                self.prefix, schema=columns.arrow_schema(), shard_name_template=base.SHARD_TEMPLATE
            )
        )


FORMAT = base.FileFormat(
    name="parquet",
    extensions=(".parquet", ".pq"),
    read=read,
    head_problem=head_problem,
    write_predictions=WritePredictions,
    needs_seekable_file=True,
    split="row_groups",
)
