"""The `analyze` pipeline: tf.Transform analysis of training records, on the Arrow path.

Reads and validates training records like `predict` does, hands them to tf.Transform as
Arrow RecordBatches through a TFXIO TensorAdapterConfig (not the instance-dict path),
runs `AnalyzeDataset` on the training split, and writes:

- `OUTPUT/transform_fn/`, `OUTPUT/transformed_metadata/`: the transform artifacts;
- `OUTPUT/transformed/{train,eval}-*.tfrecord.gz`: `TransformDataset` output as tf.Examples,
  what the trainer reads; the eval split is --eval_percent of each label's records;
- `OUTPUT/errors-*`, `OUTPUT/analyze.errors_stats`: records that were left out, and why;
- `OUTPUT/data_profile.json`: the training records' profile, which export completes into the
  model's training profile (what every run's data-quality gate compares with);
- `OUTPUT/run.json`, then `OUTPUT/_SUCCESS` when at most --max_error_rate of the records failed.

Run it as `python -m pipeline.analyze --schema ads --input 'data/*.jsonl' --output_dir OUT`
with any Beam options (e.g. `--runner DataflowRunner`).
"""

from __future__ import annotations

import heapq
import json
import os
import sys
import tempfile
import time
import uuid
import zlib

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import StandardOptions

from pipeline import errors
from pipeline import options as opts
from pipeline.blocks import RecordBlock, RecordLayout, with_missing_marked
from pipeline.entrypoint import pipeline_main
from pipeline.io import stores
from pipeline.quality.profiling import ProfileRecordsFn
from pipeline.read import BLOCKS, COUNTS, ERRORS, RECORDS, ReadAdRecords, check_inputs, separate_errors
from pipeline.run import finalize
from pipeline.run.finalize import FinalizeRun, RunConfig
from pipeline.run.manifest import finished_run, versions
from pipeline.run_contract import (
    ANALYZE_JOB,
    ANALYZED,
    DATA_PROFILE,
    RAW_EVAL_SAMPLE,
    RUN_MANIFEST,
    SUCCESS_MARKER,
)
from pipeline.runners import LOCAL_RUNNERS
from pipeline.runners.dataflow import is_dry_run, local_stand_in
from pipeline.runners.launch import launch_run, make_pipeline
from pipeline.startup import freeze_imported_objects
from pipeline.validation import error_for_row
from pipeline.write import WriteErrors
from transforms.data_profile import with_training_vocabularies
from transforms.model_contract import InputField, description_from_schema
from transforms.schema import Schema, load_schema

TRAIN, EVAL = "train", "eval"
EVAL_SAMPLE = "eval_sample"  # raw eval records, for the exported model's golden records
EVAL_SAMPLE_SIZE = 1000  # golden records (the first 32) and the bf16 check (all)
TRANSFORMED_DIR = "transformed"


def training_layout(schema: Schema, csv_columns: str | None = None) -> RecordLayout:
    """Model inputs plus the label, which training records must carry (0 or 1, or a raw
    value the schema's `label.values` maps to 0 or 1; see `map_labels`).

    Headerless CSV files take their column order from `csv_columns` (the flag), else from
    the schema file.
    """
    inputs = description_from_schema(schema).inputs
    if schema.label_values:
        label = InputField(schema.label, schema.raw_label_type, required=True)
    else:
        label = InputField(schema.label, "int", required=True, range=(0, 1))
    columns = tuple(c.strip() for c in csv_columns.split(",")) if csv_columns else schema.csv_columns
    return RecordLayout(inputs + (label,), schema.key_field, schema.key_type, csv_columns=columns)


def schema_record(schema: Schema) -> dict:
    """What run.json keeps of the schema file: its path and its text."""
    with open(schema.path, encoding="utf-8") as f:
        return {"path": os.path.abspath(schema.path), "text": f.read()}


def map_labels(block: RecordBlock, schema: Schema, layout: RecordLayout) -> tuple[RecordBlock | None, list]:
    """The block with its raw labels mapped to 0/1 by the schema's `label.values`, and one
    `out_of_range` error record per row whose label the mapping lacks.

    Arrow kernels over the whole column (index_in against the keys, take of the classes): no
    Python per record but for the failing rows. A block of an unmapped schema is returned as is.
    """
    if not schema.label_values:
        return block, []
    raw = block.batch.column(schema.label)
    keys = list(schema.label_values)
    key_type = pa.int64() if schema.raw_label_type == "int" else pa.string()
    index = pc.index_in(raw, value_set=pa.array(keys, key_type))
    mapped = pc.take(pa.array(list(schema.label_values.values()), pa.int64()), index)
    unmapped = pc.fill_null(pc.is_null(mapped), True).to_numpy(zero_copy_only=False)
    error_records = []
    if unmapped.any():
        accepted = ", ".join(repr(k) for k in keys)
        for row in np.flatnonzero(unmapped):
            value = raw[int(row)].as_py()
            message = (
                f"label {schema.label!r} is {value!r}, not one of the values the schema maps to a class "
                f"({accepted}); add it to label.values in {schema.path or 'the schema file'}"
            )
            error_records.append(
                error_for_row(block, layout, int(row), errors.OUT_OF_RANGE, schema.label, message)
            )
    batch = block.batch.set_column(block.batch.schema.get_field_index(schema.label), schema.label, mapped)
    keep = np.flatnonzero(~unmapped)
    if len(keep) < len(unmapped):
        batch = batch.take(pa.array(keep)) if len(keep) else None
    return (RecordBlock(block.source, batch) if batch is not None else None), error_records


class _MapLabelsFn(beam.DoFn):
    """Maps the labels of the record blocks on a read stream; error lists pass as they are.

    It runs on the stream itself (before errors are separated), so its errors join the
    read's without a Flatten.
    """

    def __init__(self, schema: Schema, layout: RecordLayout):
        self._schema = schema
        self._layout = layout

    def process(self, item):
        if isinstance(item, list):
            yield item
            return
        block, failed = map_labels(item, self._schema, self._layout)
        if block is not None:
            yield block
        if failed:
            yield failed


def label_field(schema: Schema) -> InputField:
    """The label as tf.Transform receives it: an int, 0 or 1 (after `map_labels`)."""
    return InputField(schema.label, "int", required=True, range=(0, 1))


def to_tfxio_batch(block: RecordBlock, schema: Schema) -> pa.RecordBatch:
    """A validated block in tf.Transform's Arrow format: one list column per feature.

    Missing optional values get the same markers the exported model receives (NaN, "",
    the int default, an empty list), so analysis and serving see identical inputs.
    """
    columns, names = [], []
    num_rows = block.batch.num_rows
    single_offsets = pa.array(np.arange(num_rows + 1, dtype=np.int32))
    layout_fields = {f.name: f for f in training_layout(schema).fields}
    if schema.label:
        layout_fields[schema.label] = label_field(schema)
    for name, field in layout_fields.items():
        column = block.batch.column(name)
        if field.type == "string_list":
            column = pc.fill_null(column, pa.scalar([], pa.list_(pa.string())))
            columns.append(pc.cast(column, pa.list_(pa.binary())))
        else:
            values = with_missing_marked(column, field)
            if field.type in ("string", "image"):
                values = pc.cast(values, pa.binary())
            columns.append(pa.ListArray.from_arrays(single_offsets, values))
        names.append(name)
    return pa.RecordBatch.from_arrays(columns, names)


def tensor_adapter_config(schema: Schema):
    """TFXIO description of `to_tfxio_batch`'s output for tf.Transform."""
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.public import tfxio
    from tfx_bsl.tfxio import tensor_representation_util

    schema_proto = schema_utils.schema_from_feature_spec(schema.raw_feature_spec())
    representations = tensor_representation_util.InferTensorRepresentationsFromSchema(schema_proto)
    layout = training_layout(schema)
    empty = to_tfxio_batch(map_labels(layout.empty_block(), schema, layout)[0], schema)
    return tfxio.TensorAdapterConfig(empty.schema, representations)


# Per label, the split is exact while its eval share is at most this many rows (see SplitTrainEval).
EXACT_SPLIT_KEYS = 1000


def split_keys(block: RecordBlock) -> np.ndarray:
    """Each row's split key (uint64), from its file's name and its line alone."""
    salt = zlib.crc32(os.path.basename(block.source).encode())
    mixed = (block.lines.astype(np.uint64) * np.uint64(2654435761) + np.uint64(salt)) % np.uint64(2**32)
    return ((mixed % np.uint64(100)) << np.uint64(32)) | mixed


def _labels(block: RecordBlock, label: str | None) -> np.ndarray:
    """The rows' labels (0/1 once mapped); one group of zeros when the schema declares none."""
    if not label:
        return np.zeros(len(block), dtype=np.int64)
    return block.batch.column(label).to_numpy(zero_copy_only=False)


def _label_key_summaries(block: RecordBlock, label: str):
    """(label, (count, smallest keys, largest key)) for each label in the block."""
    keys, labels = split_keys(block), _labels(block, label)
    for value in np.unique(labels):
        mine = np.sort(keys[labels == value])
        yield int(value), (len(mine), [int(k) for k in mine[:EXACT_SPLIT_KEYS]], int(mine[-1]))


class _LabelKeysFn(beam.CombineFn):
    """Merges `_label_key_summaries` of one label; associative, so the bundling does not matter."""

    def create_accumulator(self):
        return 0, [], -1

    def add_input(self, accumulator, summary):
        return self.merge_accumulators([accumulator, summary])

    def merge_accumulators(self, accumulators):
        accumulators = list(accumulators)
        smallest = heapq.nsmallest(EXACT_SPLIT_KEYS, heapq.merge(*(a[1] for a in accumulators)))
        return sum(a[0] for a in accumulators), smallest, max(a[2] for a in accumulators)

    def extract_output(self, accumulator):
        return accumulator


def eval_rule(summary: tuple, eval_percent: int) -> tuple | None:
    """(threshold, smallest, largest) of one label's held-out rows, or None: all in train.

    A row is held out when its key is below threshold or the smallest, and not the largest.
    """
    count, smallest, largest = summary
    if count < 2 or not eval_percent:
        return None
    wanted = min(max((count * eval_percent + 50) // 100, 1), count - 1)
    threshold = smallest[wanted - 1] + 1 if wanted <= len(smallest) else eval_percent << 32
    return threshold, smallest[0], largest


def held_out(keys: np.ndarray, labels: np.ndarray, summaries: dict, eval_percent: int) -> np.ndarray:
    """Which rows go to the eval split, by their `split_keys` and each label's `eval_rule`."""
    is_eval = np.zeros(len(keys), dtype=bool)
    for value, summary in summaries.items():
        rule = eval_rule(summary, eval_percent)
        if rule is not None:
            threshold, smallest, largest = (np.uint64(v) for v in rule)
            is_eval |= (labels == value) & ((keys < threshold) | (keys == smallest)) & (keys != largest)
    return is_eval


class _SplitFn(beam.DoFn):
    """Splits blocks into train and eval rows (`held_out`); each label's key summary is a side input."""

    def __init__(self, schema: Schema, eval_percent: int):
        self._schema = schema
        self._eval_percent = eval_percent

    def process(self, block: RecordBlock, summaries: dict):
        labels = _labels(block, self._schema.label)
        is_eval = held_out(split_keys(block), labels, summaries, self._eval_percent)
        batch = to_tfxio_batch(block, self._schema)
        for tag, mask in ((TRAIN, ~is_eval), (EVAL, is_eval)):
            if mask.any():
                yield beam.pvalue.TaggedOutput(tag, batch.filter(pa.array(mask)))
        if is_eval.any():  # a few raw eval records of each block, as a run would read them
            raw = block.batch.filter(pa.array(is_eval)).slice(0, EVAL_SAMPLE_SIZE).to_pylist()
            for record in raw:
                yield beam.pvalue.TaggedOutput(
                    EVAL_SAMPLE,
                    {k: v for k, v in record.items() if v is not None and not k.startswith("__")},
                )


class SplitTrainEval(beam.PTransform):
    """Record blocks -> TRAIN and EVAL tfxio batches, and EVAL_SAMPLE raw records: the held-out
    split, stratified by label, so that a small sample's few clicks reach it too.

    Each row's key comes from its file's name and line (`split_keys`), not from the block or
    bundle it arrives in, so the split is the same run to run and however the input is cut.
    Keys are `(h % 100) << 32 | h`, h a 32-bit hash unique within a file: `key < eval_percent
    << 32` is the per-row rule of before (h % 100 < eval_percent). Two passes: a per-label
    combine of the keys (count, the EXACT_SPLIT_KEYS smallest, the largest: a few thousand
    integers whatever the data's size) is the side input of the split, which holds out, per
    label, the round(eval_percent% of count) smallest keys, at least 1 and at most count - 1,
    so a label with 2 or more records reaches both splits. Past EXACT_SPLIT_KEYS held-out rows
    it takes the per-row rule (the share is then within a few percent of eval_percent), still
    holding out the smallest key and keeping the largest. Grouping the records themselves by
    label would instead put every negative on one worker.
    """

    def __init__(self, schema: Schema, eval_percent: int):
        super().__init__()
        self._schema = schema
        self._eval_percent = eval_percent

    def expand(self, blocks):
        summaries = (
            blocks
            | "LabelSplitKeys" >> beam.FlatMap(_label_key_summaries, self._schema.label)
            | "PerLabel" >> beam.CombinePerKey(_LabelKeysFn())
        )
        return blocks | "Split" >> beam.ParDo(
            _SplitFn(self._schema, self._eval_percent), beam.pvalue.AsDict(summaries)
        ).with_outputs(TRAIN, EVAL, EVAL_SAMPLE)


class _WriteEvalSampleFn(beam.DoFn):
    """Writes the sampled raw eval records as JSON lines (`RAW_EVAL_SAMPLE`)."""

    def __init__(self, output_dir: str):
        self._path = FileSystems.join(output_dir, RAW_EVAL_SAMPLE)

    def process(self, records: list):
        lines = "".join(json.dumps(record, sort_keys=True, allow_nan=False) + "\n" for record in records)
        with FileSystems.create(self._path) as f:
            f.write(lines.encode("utf-8"))
        yield self._path


class _WriteProfileFn(beam.DoFn):
    """Writes the training records' profile (`DATA_PROFILE`), with each categorical feature's
    vocabulary as tf.Transform keeps it (its top_k values); export adds the model's outputs."""

    def __init__(self, output_dir: str, schema: Schema):
        self._path = FileSystems.join(output_dir, DATA_PROFILE)
        self._top_k = {f.name: f.top_k for f in schema.features if f.encoding in ("one_hot", "multi_hot")}

    def process(self, profile: dict):
        profile = with_training_vocabularies(profile, self._top_k)
        with FileSystems.create(self._path, mime_type="application/json") as f:
            f.write(json.dumps(profile, indent=1).encode("utf-8"))
        yield self._path


def _sample_order(record: dict) -> int:
    """A stable pick of the sample: the same records whichever blocks they came in."""
    return zlib.crc32(json.dumps(record, sort_keys=True, default=str).encode())


def build_analyze(
    pipeline,
    schema: Schema,
    inputs,
    output_dir,
    input_format=None,
    eval_percent=20,
    layout=None,
    run: RunConfig | None = None,
):
    """Builds the graph; returns {"transform_fn", "train", "eval", "errors", "manifest"}.

    The last step writes `run.json` and, when at most `run.max_error_rate` of the records
    were errors, `_SUCCESS`: a transform trained on the 7% of rows that parsed is a failed run.
    """
    import tensorflow_transform.beam as tft_beam

    from transforms.preprocessing import make_preprocessing_fn

    layout = layout or training_layout(schema)
    read = pipeline | "ReadAdRecords" >> ReadAdRecords(inputs, layout, input_format)
    stream = read[RECORDS]
    if schema.label_values:
        stream = stream | "MapLabels" >> beam.ParDo(_MapLabelsFn(schema, layout))
    records = separate_errors(stream)
    split = records[BLOCKS] | "SplitTrainEval" >> SplitTrainEval(schema, eval_percent)
    config = tensor_adapter_config(schema)
    transform_fn = (split[TRAIN], config) | "AnalyzeDataset" >> tft_beam.AnalyzeDataset(
        make_preprocessing_fn(schema)
    )
    written = [transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(output_dir)]
    outputs = {"transform_fn": transform_fn, ERRORS: records[ERRORS]}
    for tag in (TRAIN, EVAL):
        # Record batches, encoded by tfx_bsl's C++ coder: the same tf.Examples as instance dicts
        # through ExampleProtoCoder, a third faster on the demo's data, and no warning from tft.
        transformed = ((split[tag], config), transform_fn) | f"Transform{tag.title()}" >> (
            tft_beam.TransformDataset(output_record_batches=True)
        )
        written.append(
            transformed
            | f"Encode{tag.title()}" >> tft_beam.EncodeTransformedDataset()
            | f"Write{tag.title()}"
            >> beam.io.WriteToTFRecord(
                os.path.join(output_dir, TRANSFORMED_DIR, tag), file_name_suffix=".tfrecord.gz"
            )
        )
        outputs[tag] = transformed[0]  # (RecordBatch, passthrough) pairs
    written.append(records[ERRORS] | "WriteErrors" >> WriteErrors(output_dir))
    written.append(
        split[EVAL_SAMPLE]
        | "SampleEval" >> beam.combiners.Top.Of(EVAL_SAMPLE_SIZE, key=_sample_order)
        | "WriteEvalSample" >> beam.ParDo(_WriteEvalSampleFn(output_dir))
    )
    inputs_profiled = [(f.name, f.type) for f in description_from_schema(schema).inputs]
    written.append(
        stream  # blocks and error lists: the profile counts each feature's rejected records
        | "ProfileTraining" >> beam.CombineGlobally(ProfileRecordsFn(inputs_profiled))
        | "WriteProfile" >> beam.ParDo(_WriteProfileFn(output_dir, schema))
    )
    counts = (
        read[COUNTS],
        records[BLOCKS] | "CountAnalyzed" >> beam.Map(lambda block: (ANALYZED, len(block))),
        records[ERRORS] | "CountErrors" >> beam.Map(lambda failed: (ERRORS, len(failed))),
    )
    run = run or RunConfig({"job": ANALYZE_JOB})
    outputs["manifest"] = {
        finalize.COUNTS: counts | "AllCounts" >> beam.Flatten(),
        finalize.ERROR_LISTS: records[ERRORS],
        **{f"written_{index}": pcoll for index, pcoll in enumerate(written)},
    } | "FinalizeRun" >> FinalizeRun(output_dir, run, scored=ANALYZED)
    return outputs


def run(argv=None, test_pipeline=None) -> dict:
    """Parses options, builds and runs the analyze pipeline; returns its run.json."""
    import tensorflow_transform.beam as tft_beam
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    freeze_imported_objects()
    options = opts.CachedViewOptions(argv)
    opts.validate_analyze(options)
    stores.use_run_options(options)  # gs:// checks before the run use the run's credentials
    io = options.view_as(opts.RecordIOOptions)
    schema = load_schema(options.view_as(opts.AnalyzeOptions).schema)
    layout = training_layout(schema, io.csv_columns)
    inputs = opts.inputs_from(options)
    offline = is_dry_run(options)  # a Dataflow dry run reads nothing: see pipeline.runners.dataflow
    temp_location = options.view_as(GoogleCloudOptions).temp_location
    if stores.is_object_store(io.output_dir):
        _check_local_analyze(options, io.output_dir, temp_location)
    if not offline:
        stores.check_stores(
            options, [*(("--input", p) for p in inputs.file_patterns), ("--output_dir", io.output_dir)]
        )
        check_inputs(inputs, io.input_format, layout)
        for name in (SUCCESS_MARKER, RUN_MANIFEST):  # a failing re-run must not keep the old marker
            path = FileSystems.join(io.output_dir, name)
            if FileSystems.exists(path):
                FileSystems.delete([path])
    run_info = {
        "run_id": uuid.uuid4().hex,
        "started": time.time(),
        "job": ANALYZE_JOB,
        "schema": schema.name,
        # The schema file itself, so that `train` reads the data with the schema it was made with.
        "schema_file": schema_record(schema),
        "inputs": {
            "patterns": io.input,
            "query": io.input_query,
            "format": io.input_format or "from file names",
        },
        "output_dir": io.output_dir,
        "versions": versions(),
    }
    run = RunConfig(
        run_info,
        io.max_error_rate,
        records="training records",
        failed_means=f": the transform was not marked usable (no {SUCCESS_MARKER})",
    )
    pipeline = test_pipeline or make_pipeline(options)
    # S3 and Azure: tf.Transform writes with TensorFlow's file system, which has neither, so
    # the run writes here and its files are uploaded when it ends (stores.written_locally).
    with stores.written_locally(io.output_dir) as output_dir, tempfile.TemporaryDirectory() as scratch:
        local_target = output_dir != io.output_dir
        temp_dir = temp_location or os.path.join(scratch if local_target else output_dir, "tmp")
        # tf.Transform writes temporary assets while the graph is built; a dry run keeps them in
        # its local stand-in for Cloud Storage.
        with tft_beam.Context(temp_dir=local_stand_in(options, temp_dir)):
            build_analyze(
                pipeline,
                schema,
                inputs,
                output_dir,
                io.input_format,
                options.view_as(opts.AnalyzeOptions).eval_percent,
                layout,
                run,
            )
            launched = launch_run(pipeline, options, output_dir, run)
        if launched:  # a dry run, or submitted without waiting
            return {**launched, "output_dir": io.output_dir}
        return finished_run(output_dir, run)


def _check_local_analyze(options, output_dir: str, temp_location: str | None) -> None:
    """An S3 or Azure --output_dir is written from this machine (see `run`): only a run whose
    steps all run in this process can, and tf.Transform's temporary files stay here too."""
    runner = options.view_as(StandardOptions).runner
    if runner not in LOCAL_RUNNERS:
        raise opts.OptionsError(
            f"--output_dir {output_dir}: analyze writes to S3 or Azure from this machine (tf.Transform writes "
            f"with TensorFlow's file system, which has neither), so it runs on the DirectRunner only, not "
            f"{runner}; on Dataflow or Dask analyze into gs:// or a directory every worker shares"
        )
    if temp_location and stores.is_object_store(temp_location):
        raise opts.OptionsError(
            f"--temp_location {temp_location}: tf.Transform writes its temporary files with TensorFlow's file "
            "system, which reads and writes local and gs:// paths only; leave it out (a local one is used)"
        )


def main(argv=None) -> int:
    return pipeline_main(run, argv, "adpredict analyze", __doc__, opts.AnalyzeOptions)


if __name__ == "__main__":
    sys.exit(main())
