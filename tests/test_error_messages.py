"""Every error a user can trigger names the thing, the place and the fix (issue 9).

Each case triggers its error the way a user would: a command line (`pipeline.cli.main`,
exit code 2 and one `adpredict <command>: error: ...` line), a hostile input file read through
`pipeline.io.read_stream` + `pipeline.validation.validate_block` (one error record with
`source` "<file>:<line>" and `error` {code, field, message}), or a schema file through
`transforms.schema.parse_schema`. It asserts on the words of the message: the thing (flag,
field, file, table), the place and the fix, not only that something failed.

Audit: message (abbreviated) -> test (`[id]` is the parametrized case). "internal" marks
messages no user can reach from the command line, with the reason.

Flags (pipeline/options.py, pipeline/predict.py; exit 2)
  --input is required ... or --input_query               -> test_flag_mistakes[input_required]
  --input_filter applies to a bq:// --input table only   -> test_flag_mistakes[input_filter_without_table]
  --output_dir is required: the directory ...            -> test_flag_mistakes[output_dir_required]
  --max_error_rate must be between 0 and 1, got X        -> test_flag_mistakes[max_error_rate_range]
  --model_dir is required: ... `adpredict train` ...     -> test_flag_mistakes[model_dir_required]
  --batch_size must be at least 1, got N                 -> test_flag_mistakes[batch_size_positive]
  --tf_threads must be at least 1, got N                 -> test_flag_mistakes[tf_threads_positive]
  --output_format bigquery needs --output_table ...      -> test_flag_mistakes[bigquery_needs_output_table]
  --output_table needs --output_format bigquery, got ... -> test_flag_mistakes[output_table_needs_bigquery]
  --eval_percent must be in [0, 100), got N              -> test_flag_mistakes[eval_percent_range]
  argparse: argument --X: invalid choice (Beam parser)   -> test_a_value_outside_a_flags_choices
  --passthrough_fields has an empty name in ...          -> test_input_mistakes[passthrough_empty_name]
  --passthrough_fields: 'key' is a column of every ...   -> test_input_mistakes[passthrough_reserved]
  --passthrough_fields: type of 'x' must be one of ...   -> test_input_mistakes[passthrough_type]
  --model_dir ... is not on gs://: Dataflow workers ...  -> test_input_mistakes[dataflow_local_model]
  cannot create or clear --output_dir ...: <OSError>     -> test_input_mistakes[output_dir_uncreatable]
  --output_dir ... is in use by another run (lock file)  -> tests/test_run_safety.py (lock work in progress)
  N of M records failed ... above --max_error_rate (=3)  -> tests/test_predict.py::test_error_rate_thresh...
Model directory (transforms/model_contract.py; exit 2)
  model directory 'x' does not exist; check --model_dir  -> test_model_directory_mistakes[missing]
  'x' is not a SavedModel (no saved_model.pb) ...        -> test_model_directory_mistakes[not_a_saved_model]
  model directory x is corrupt: saved_model.pb (0 by... -> test_model_directory_mistakes[empty_saved_model]
  ... saved_model.pb (N bytes) is not a SavedModel ...   -> test_model_directory_mistakes[corrupt_saved_model]
  ... is incomplete: variables/... is N bytes, the ch... -> tests/test_model_integrity.py (truncated, missing
                                                            index, missing asset; also on each worker)
  <json>: unknown keys [...]; known keys are ...         -> tests/test_foreign_models.py (hand_written)
  <origin>: the signature takes input 'x' ..., add it    -> tests/test_foreign_models.py (hand_written)
  <origin>: output 'x' is not an output of the signa...  -> tests/test_foreign_models.py (hand_written)
  <origin>: input 'x' is declared T, but the model p...  -> tests/test_foreign_models.py (input_schema)
  <origin>: the model requires tf.Example feature 'x'... -> tests/test_foreign_models.py (input_schema)
  <origin>: input 'x' is not an input of the signatu...  -> test_model_directory_mistakes[stray_input]
  <origin>: input 'x': declared T (fed as ...), but ...  -> test_model_directory_mistakes[wrong_dtype]
  ... has no signature 'x' (it has: ...); set ...        -> test_model_directory_mistakes[no_signature]
  <json>: format_version N is not 1; re-export ...       -> test_model_directory_mistakes[old_format_version]
  <json>: not a valid model description ...; re-export   -> test_model_directory_mistakes[broken_description]
Inputs (pipeline/read.py, pipeline/io/; exit 2, a pattern matching nothing exit 5)
  input pattern 'p' matches no file; check ...           -> test_input_mistakes[no_match]
  cannot list input pattern 'p': ...; check its scheme   -> test_input_mistakes[cannot_list]
  input pattern 'p' matches files of several formats ... -> test_input_mistakes[several_formats]
  cannot tell the format of 'f' from its name ...        -> test_input_mistakes[unknown_extension]
  f does not look like jsonl: it starts with ...         -> test_input_mistakes[jsonl_binary]
  f does not look like csv: it holds binary data         -> test_input_mistakes[csv_nul_bytes]
  f does not look like csv: first line not ... UTF-8     -> test_input_mistakes[csv_header_not_utf8]
  f does not look like csv: first row names none ...     -> test_input_mistakes[csv_without_header]
  f does not look like tfrecord: not a TFRecord header   -> test_input_mistakes[tfrecord_bad_header]
  f does not look like parquet: not the Parquet magic    -> test_input_mistakes[parquet_bad_magic]
  (same, on a worker, for files past the first 20)       -> test_a_file_checked_on_a_worker_names_its_format
  --input 'bq://x' is not a BigQuery table; write ...    -> test_input_mistakes[input_table_malformed]
  --output_table 'bq://x' is not a BigQuery table ...    -> test_input_mistakes[output_table_malformed]
  --input_query needs --query_dataset project.dataset    -> test_input_mistakes[query_without_dataset]
  --input_format must be one of ..., got 'x'             -> test_an_unknown_input_format_through_the_api
                                                            (internal from the CLI: argparse refuses first)
  no --input given: pass one or more file patterns ...   internal: validate_predict/analyze refuse first
  cannot tell the format of --output ... pass --format   -> test_generate_output_named_after_no_format
BigQuery (pipeline/io/bigquery.py; exit 2, a missing input table exit 5; local BigQuery server)
  BigQuery table bq://t does not exist: ...; check ...   -> test_bigquery_mistakes[table_missing]
  --input_query is not valid standard SQL: ...           -> test_bigquery_mistakes[query_not_sql]
  a table or --query_dataset of --input_query does not.. -> test_bigquery_mistakes[query_dataset_missing]
  --output_table bq://t: dataset d does not exist; bq mk -> test_bigquery_mistakes[output_dataset_missing]
  BigQuery refused bq://t: ...; check ... credentials    -> test_bigquery_refusing_a_read_names_the_table_
                                                            and_the_credentials
Error records (pipeline/io/*.py, pipeline/validation.py, pipeline/blocks.py)
  line is not valid JSON: ...                            -> test_error_records[jsonl_not_json]
  expected a JSON object per line, got an array          -> test_error_records[jsonl_not_an_object]
  field 'f' holds bytes that are not UTF-8 ...; iconv    -> test_error_records[jsonl_not_utf8], [csv_not_utf8]
  field 'f' must be an integer, got "old"                -> test_error_records[jsonl_wrong_type],
                                                            [csv_wrong_type_after_a_list_column] (was blamed
                                                            on 'interests'), [csv_wrong_type_beside_a_large_
                                                            cell] (was "field larger than field limit")
  field 'f' must be ... (declare its type: --passthr...) -> test_error_records[jsonl_untyped_passthrough_
                                                            number]
  field 'id' must be a string, got 17 (quote the key...) -> test_error_records[jsonl_numeric_key]
  field 'f' is N, beyond the 64-bit integer range        -> test_error_records[jsonl_int_beyond_int64]
  ...; declare the key as text in the schema             -> test_error_records[jsonl_int_key_beyond_int64]
  record could not be read as the declared types: ...    -> test_error_records[jsonl_field_given_twice]
  row could not be read as the declared types: ...       -> test_error_records[csv_value_only_python_reads]
  ... declared types: it does not read as exactly one .. internal: when pyarrow reads the record alone
  expected N columns as in the header of f, got M        -> test_error_records[csv_column_count]
  expected N columns as the declared csv_columns, got M  -> test_error_records[csv_column_count_declared]
  a quoted field ... is never closed ...; close it ...   -> test_error_records[csv_unbalanced_quote]
  line is not valid CSV: a field holds a carriage return -> test_error_records[csv_carriage_return]
  line is not one CSV record                             internal: a line csv.reader splits in two is
                                                            refused by csv.Error first
  record is not a serialized tf.Example: ...             -> test_error_records[tfrecord_not_an_example]
  feature 'f' must be an int64_list (declared int), got  -> test_error_records[tfrecord_wrong_kind]
  tf.Example could not be decoded                        internal: fallback when no single feature fails
  <framing problem> at byte B of f; ... complete copy    -> test_error_records[tfrecord_truncated]
  f is not a readable Parquet file (...); none of its .. -> test_error_records[parquet_unreadable]
  row group G of f (rows a-b) cannot be decoded: ...     -> test_error_records[parquet_row_group_corrupt]
  field 'f' must be an integer, got 1.5 (typed sources)  -> test_error_records[parquet_wrong_type],
                                                            [tfrecord_several_values]
  record has no key field 'id', ...; give every record.. -> test_error_records[missing_key]
  required field 'f' is missing or null; give every ...  -> test_error_records[missing_required_field]
  field 'f' is nan, not a finite number                  -> test_error_records[not_finite]
  field 'f' is N, outside the valid range [a, b]         -> test_error_records[out_of_range]
  field 'f' has N items, more than the limit ...         -> test_error_records[too_many_items]
  field 'f' is not a base64-encoded JPEG or PNG image    -> test_error_records[not_an_image]
  field 'f' is N base64 characters, more than the limit  -> test_error_records[image_too_many_bytes]
  field 'f' declares W x H pixels, ...; resize it ...    -> test_error_records[image_too_many_pixels]
  f ends before its gzip end marker ...; replace it ...  -> test_a_gzip_file_cut_short_is_one_error_naming_it
Inference (pipeline/inference/failures.py)
  the model ran out of memory scoring this record alone  -> tests/test_inference_faults.py (record alone OOM)
  the model rejected this record alone: ...; field 'f'.. -> tests/test_inference_faults.py (corrupt JPEG)
Schema file (transforms/schema.py; exit 2 through `--schema`; test_schema_mistakes[...] unless noted)
  schema file 'x' does not exist; give a YAML file or .. -> test_schema_file_mistakes_on_the_command_line
                                                            [missing]
  x: not valid YAML: line L, column C: <problem>         -> test_schema_file_mistakes_on_the_command_line
                                                            [not_yaml]
  x: expected a mapping with a 'features' list           -> [not_a_mapping]
  x: unknown keys [...]; known keys are [...]            -> [unknown_top_level_key]
  x: key: unknown keys [...] (key/label sections)        -> [unknown_key_setting]
  x: 'features' must be a non-empty list                 -> [no_features]
  x: features declared twice: f                          -> [feature_twice]
  x: key type must be string or int, got 't'             -> [key_type]
  x: 'key' must be {field: <name>} or {from: line} ...   -> [key_not_a_mapping]
  x: 'label' must be {field: <name>}, got ...            -> [label_not_a_mapping]
  x: ['f'] is the key or label, not a feature; remove .. -> [key_is_a_feature]
  x: csv_columns must be a list of column names          -> [csv_columns_not_a_list]
  x: csv_columns lacks the features [...]                -> [csv_columns_lack_a_feature]
  x: each feature needs a 'name': ...                    -> [feature_without_name]
  x: feature 'f': unknown keys [...]; known keys are ... -> [unknown_feature_key]
  x: feature 'f': type must be one of ..., got 't'       -> [type]
  x: feature 'f': encoding must be one of ..., got 'e'   -> [encoding]
  x: feature 'f': encoding 'e' does not apply ...; use.. -> [encoding_for_type]
  x: feature 'f': top_k/height/... must be an integer    -> [top_k_not_an_integer],
                                                            [image_size_not_an_integer]
  x: feature 'f': sample must be a mapping ..., got ...  -> [sample_not_a_mapping]
  x: feature 'f': range must be [min, max], two numbers  -> [range_not_two_numbers]
  x: feature 'f': range [a, b] is empty; write it ...    -> [range_empty]
  x: feature 'f': boundaries must be a non-empty incr... -> [boundaries]
  x: feature 'f': bucketize needs exactly one of ...     -> [bucketize]
  x: feature 'f': one_hot of an int needs range: [...]   -> [one_hot_int_range]
  x: feature 'f': images need height and width (...)     -> [image_size]
  x: feature 'f': channels must be 1 or 3, got N         -> [channels]
  x: feature 'f': a required feature cannot have a mis.. -> [required_with_missing_rule]
  x: feature 'f': missing must be {default: ..., indi..} -> [missing_rule_shape]
  x: feature 'f': an int has no missing marker ...       -> [int_indicator]
  x: feature 'f': a missing string_list is the empty ... -> [string_list_default]
  x: feature 'f': a missing image is all zeros; give ... -> [image_default]
  x: feature 'f': default v is not an int, the feature.. -> [default_type]
Nightly config (pipeline/nightly.py; exit 2; test_nightly_config_mistakes[...])
  nightly config 'x' does not exist; check --config      -> [missing]
  x: not valid YAML: line L, column C: <problem>         -> [not_yaml]
  x: expected a mapping of settings                      -> [not_a_mapping]
  x: unknown keys [...]; known keys are [...]            -> [unknown_key]
  x: 'model_dir' is required (also 'output_dir')         -> [model_dir_required]
  x: give 'input' (file pattern or bq:// table) or ...   -> [no_input]
  x: output_dir must contain {date}, or each night ...   -> [output_dir_without_date]
  x: unknown timezone 'z' (e.g. Europe/Berlin)           -> [timezone]
  --parity_only needs transform_dir in the nightly conf  -> [parity_only_without_transform]
  --backfill: END is before START; give START first: ..  -> [backfill_backwards]
  argparse: argument --date: invalid fromisoformat value -> test_nightly_date_that_is_not_a_date
Parity gate (pipeline/parity.py, pipeline/nightly.py; exit 7, `adpredict nightly D: failed: ...`)
  no valid record to compare in [...]: none of their ... -> test_parity_gate_failures[no_valid_record]
  m has no 'transform_features' signature ...; remove .. -> test_parity_gate_failures[no_signature]
  feature 'f' of the model is not produced by the tra... -> test_parity_gate_failures[renamed]
  feature 'f': the model gives shape ..., the transfo... -> test_parity_gate_failures[reshaped]
  training/serving skew: feature 'f' differs by up to .. -> test_parity_gate_failures[skewed]
  the parity gate samples files; ... BigQuery only: ...  -> test_parity_gate_on_bigquery_inputs_only
Training (pipeline/trainer/train.py; exit 2)
  --transform_dir 'x' holds no tf.Transform output ...   -> test_training_mistakes[no_transform_output]
  no transformed train data under x/transformed; run ..  -> test_training_mistakes[no_transformed_data]
  (a held-out split of one label is no longer a mistake: train exports and warns that the
   AUC is undefined, tests/test_small_samples.py)
  unknown image tower 'x'                                internal: argparse choices refuse first
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import gzip
import http.server
import io
import json
import os
import shutil
import struct
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import cli
from pipeline.io import blocks_and_errors, read_stream
from pipeline.run_contract import EXIT_INPUT_NOT_READY, EXIT_USAGE
from pipeline.validation import MAX_IMAGE_BYTES, MAX_LIST_ITEMS, validate_block
from transforms.model_contract import DESCRIPTION_PATH, description_from_schema
from transforms.schema import SchemaError, load_schema, parse_schema

DATE = "2026-11-26"


def one_error_line(capsys, prefix: str) -> str:
    """The single line the command printed for the user (Beam's log lines before it ignored).

    Nothing but other `adpredict` one-liners may follow it: a message that spans lines fails.
    """
    lines = capsys.readouterr().err.splitlines()
    found = [index for index, line in enumerate(lines) if line.startswith(prefix)]
    assert len(found) == 1, lines
    after = [line for line in lines[found[0] + 1 :] if line.strip()]
    assert all(line.startswith("adpredict") for line in after), lines[found[0] :]
    return lines[found[0]][len(prefix) :]


def assert_names(message: str, *parts: str) -> None:
    missing = [part for part in parts if part not in message]
    assert not missing, f"{missing} not in {message!r}"


NOT_READY = "adpredict predict: input not there yet: "  # exit 5: a scheduler retries later


def cli_error(argv: list[str], capsys, code: int = EXIT_USAGE, prefix: str | None = None) -> str:
    """The one line `adpredict <command>: error: ...` (or `prefix`) the command printed."""
    assert cli.main(argv) == code
    return one_error_line(capsys, prefix or f"adpredict {argv[0]}: error: ")


# ---------------------------------------------------------------------------------------------
# Flags: refused by validate_predict / validate_analyze before anything is read.

FLAG_CASES = {
    "input_required": (
        ["predict", "--model_dir", "m", "--output_dir", "o"],
        ["--input is required", "bq://project.dataset.table", "--input_query"],
    ),
    "input_filter_without_table": (
        [
            "predict",
            "--model_dir",
            "m",
            "--input",
            "a.jsonl",
            "--input_filter",
            "hour > 3",
            "--output_dir",
            "o",
        ],
        ["--input_filter", "bq:// --input table only", "remove it", "WHERE clause"],
    ),
    "output_dir_required": (
        ["predict", "--model_dir", "m", "--input", "a.jsonl"],
        ["--output_dir is required", "local, gs://, s3://, azfs://"],
    ),
    "max_error_rate_range": (
        ["predict", "--model_dir", "m", "--input", "a.jsonl", "--output_dir", "o", "--max_error_rate", "2"],
        ["--max_error_rate", "between 0 and 1", "got 2.0"],
    ),
    "model_dir_required": (
        ["predict", "--input", "a.jsonl", "--output_dir", "o"],
        ["--model_dir is required", "`adpredict train` exported"],
    ),
    "batch_size_positive": (
        ["predict", "--model_dir", "m", "--input", "a.jsonl", "--output_dir", "o", "--batch_size", "0"],
        ["--batch_size", "at least 1", "got 0"],
    ),
    "tf_threads_positive": (
        ["predict", "--model_dir", "m", "--input", "a.jsonl", "--output_dir", "o", "--tf_threads", "-1"],
        ["--tf_threads", "at least 1", "got -1"],
    ),
    "bigquery_needs_output_table": (
        [
            "predict",
            "--model_dir",
            "m",
            "--input",
            "a.jsonl",
            "--output_dir",
            "o",
            "--output_format",
            "bigquery",
        ],
        ["--output_format bigquery needs --output_table", "bq://project.dataset.table"],
    ),
    "output_table_needs_bigquery": (
        [
            "predict",
            "--model_dir",
            "m",
            "--input",
            "a.jsonl",
            "--output_dir",
            "o",
            "--output_table",
            "bq://p.d.t",
        ],
        ["--output_table needs --output_format bigquery", "got --output_format jsonl"],
    ),
    "eval_percent_range": (
        ["analyze", "--input", "a.jsonl", "--output_dir", "o", "--eval_percent", "100"],
        ["--eval_percent", "[0, 100)", "got 100"],
    ),
}


@pytest.mark.parametrize(("argv", "parts"), list(FLAG_CASES.values()), ids=list(FLAG_CASES))
def test_flag_mistakes(argv, parts, capsys):
    assert_names(cli_error(argv, capsys), *parts)


@pytest.mark.parametrize(
    ("flag", "choices"), [("--output_format", "'bigquery'"), ("--input_format", "'parquet'")]
)
def test_a_value_outside_a_flags_choices(flag, choices, capsys):
    argv = ["predict", "--model_dir", "m", "--input", "a.jsonl", "--output_dir", "o", flag, "xml"]
    message = cli_error(argv, capsys)  # one line, exit 2: not argparse's usage text
    assert_names(message, f"argument {flag}: invalid choice: 'xml'", "choose from", choices)


# ---------------------------------------------------------------------------------------------
# Model directories a user might point --model_dir at.


def _model_dir(tmp_path, kind: str, trained_model: str) -> str:
    model = tmp_path / "model"
    if kind == "missing":
        return str(model)
    if kind not in ("not_a_saved_model", "empty_saved_model", "corrupt_saved_model"):
        shutil.copytree(trained_model, model)  # whole, so that only its description is wrong
        (model / DESCRIPTION_PATH).unlink()
    else:
        model.mkdir()
    if kind == "not_a_saved_model":
        (model / "weights.h5").write_text("not a model")
        return str(model)
    if kind in ("empty_saved_model", "corrupt_saved_model"):
        (model / "saved_model.pb").write_bytes(b"" if kind == "empty_saved_model" else b"\x0a\xff garbage")
        return str(model)
    description = json.loads(description_from_schema(load_schema("ads")).to_json())
    if kind == "stray_input":
        description["inputs"].append({"name": "gener", "type": "string"})
    elif kind == "wrong_dtype":
        description["inputs"] = [
            {**i, "type": "float"} if i["name"] == "gender" else i for i in description["inputs"]
        ]
    elif kind == "no_signature":
        description["signature"] = "serving_raw"
    elif kind == "old_format_version":
        description["format_version"] = 0
    elif kind == "broken_description":
        del description["inputs"]
    (model / DESCRIPTION_PATH).write_text(json.dumps(description))
    return str(model)


MODEL_CASES = {
    "missing": ["does not exist", "check --model_dir", "`adpredict train` exported"],
    "not_a_saved_model": ["is not a SavedModel (no saved_model.pb)", "`adpredict train` exported"],
    "empty_saved_model": ["is corrupt: saved_model.pb (0 bytes) holds no MetaGraph", "copy the model again"],
    "corrupt_saved_model": [
        "is corrupt: saved_model.pb (10 bytes) is not a SavedModel",
        "copy the model again",
    ],
    "stray_input": [
        DESCRIPTION_PATH,
        "input 'gener' is not an input of the signature, which takes age (int64 [N])",
        "rename it or remove it",
    ],
    "wrong_dtype": [
        DESCRIPTION_PATH,
        "input 'gender': declared float (fed as float [N]), but the signature takes "
        "string of shape [N]; change its type",
    ],
    "no_signature": [
        "has no signature 'serving_raw' (it has: serving_default, serving_tf_example, transform_features)",
        f'set "signature" in {DESCRIPTION_PATH}',
    ],
    "old_format_version": [DESCRIPTION_PATH, "format_version 0 is not 1", "re-export the model"],
    "broken_description": [
        DESCRIPTION_PATH,
        "not a valid model description",
        "'inputs'",
        "re-export the model",
    ],
}


@pytest.mark.parametrize(("kind", "parts"), list(MODEL_CASES.items()), ids=list(MODEL_CASES))
def test_model_directory_mistakes(kind, parts, tmp_path, capsys, trained_ads):
    model = _model_dir(tmp_path, kind, trained_ads["model"])
    message = cli_error(["predict", "--model_dir", model, "--input", "a.jsonl", "--output_dir", "o"], capsys)
    assert_names(message, str(tmp_path / "model"), *parts)


# ---------------------------------------------------------------------------------------------
# Inputs and outputs checked before the run starts (a real model directory).


def _write(path, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def _input_case(case: str, tmp_path, data: str) -> tuple[list[str], list[str]]:
    """(extra predict flags, words the message must hold) for one input mistake."""
    d = tmp_path / "in"
    formats = "Formats: jsonl (.jsonl"
    declare = "pass --input_format"
    if case == "no_match":
        return ["--input", str(d / "nothing-*.jsonl")], [
            str(d / "nothing-*.jsonl"),
            "matches no file",
            "the glob",
        ]
    if case == "cannot_list":
        return ["--input", "nosuch://bucket/a.jsonl"], [
            "'nosuch://bucket/a.jsonl'",
            "cannot list",
            "check its scheme",
        ]
    if case == "several_formats":
        _write(d / "a.jsonl", b"{}\n")
        _write(d / "b.csv", b"id\n")
        pattern = str(d / "*")
        return ["--input", pattern], [
            pattern,
            "several formats",
            "a.jsonl (jsonl)",
            "its own --input pattern",
        ]
    if case == "unknown_extension":
        path = _write(d / "ads.dat", b"{}\n")
        return ["--input", path], [path, "cannot tell the format", "--input_format", formats]
    heads = {
        "jsonl_binary": (
            "ads.jsonl",
            b"\x89PNG\r\n\x1a\n\x00\x00",
            ["does not look like jsonl", "not a JSON object"],
        ),
        "csv_nul_bytes": ("ads.csv", b"id,age\x00\n", ["does not look like csv", "binary data (NUL bytes)"]),
        "csv_header_not_utf8": ("ads.csv", b"id,\xe2ge\nad-1,30\n", ["does not look like csv", "re-encode"]),
        "csv_without_header": (
            "ads.csv",
            b"ad-1,34,male,Twitter,sports,1.2,20,/9j/\n",
            ["does not look like csv", "names none of the fields", "csv_columns:", "--csv_columns a,b,c"],
        ),
        "tfrecord_bad_header": (
            "ads.tfrecord",
            b"not a tfrecord",
            ["does not look like tfrecord", "TFRecord header"],
        ),
        "parquet_bad_magic": ("ads.parquet", b"not parquet", ["does not look like parquet", "Parquet magic"]),
    }
    if case in heads:
        name, head, parts = heads[case]
        path = _write(d / name, head)
        return ["--input", path], [path, *parts, formats, declare]
    if case == "input_table_malformed":
        return ["--input", "bq://nodots"], [
            "--input 'bq://nodots' is not a BigQuery table",
            "bq://project.dataset.table",
        ]
    if case == "output_table_malformed":
        flags = ["--input", data, "--output_format", "bigquery", "--output_table", "bq://p.t"]
        return flags, [
            "--output_table 'bq://p.t' is not a BigQuery table",
            "write bq://project.dataset.table",
        ]
    if case == "query_without_dataset":
        return ["--input_query", "SELECT 1"], ["--input_query needs --query_dataset project.dataset"]
    if case == "passthrough_empty_name":
        return ["--input", data, "--passthrough_fields", "a,,b"], [
            "--passthrough_fields",
            "empty name",
            "'a,,b'",
            "remove the empty item",
        ]
    if case == "passthrough_reserved":
        return ["--input", data, "--passthrough_fields", "key"], [
            "--passthrough_fields",
            "'key'",
            "already",
            "leave it out",
        ]
    if case == "passthrough_type":
        flags = ["--input", data, "--passthrough_fields", "campaign:bool"]
        return flags, ["--passthrough_fields", "'campaign'", "int, float, string", "got 'bool'"]
    if case == "dataflow_local_model":
        return ["--input", data, "--runner", "DataflowRunner"], [
            "--model_dir",
            "is not on gs://",
            "cannot read a local",
            "copy it to gs://",
        ]
    if case == "output_dir_uncreatable":
        return ["--input", data], ["--output_dir", "cannot create or clear"]
    raise AssertionError(case)


INPUT_CASES = [
    "no_match",
    "cannot_list",
    "several_formats",
    "unknown_extension",
    "jsonl_binary",
    "csv_nul_bytes",
    "csv_header_not_utf8",
    "csv_without_header",
    "tfrecord_bad_header",
    "parquet_bad_magic",
    "input_table_malformed",
    "output_table_malformed",
    "query_without_dataset",
    "passthrough_empty_name",
    "passthrough_reserved",
    "passthrough_type",
    "dataflow_local_model",
    "output_dir_uncreatable",
]


@pytest.mark.parametrize("case", INPUT_CASES)
def test_input_mistakes(case, trained_ads, tmp_path, capsys):
    flags, parts = _input_case(case, tmp_path, trained_ads["data"])
    out = str(tmp_path / "out")
    if case == "output_dir_uncreatable":
        out = os.path.join(_write(tmp_path / "a-file", b"x"), "out")  # a folder inside a file
        parts = [*parts, out]
    argv = ["predict", "--model_dir", trained_ads["model"], "--output_dir", out, *flags]
    if case == "no_match":
        message = cli_error(argv, capsys, EXIT_INPUT_NOT_READY, NOT_READY)
    else:
        message = cli_error(argv, capsys)
    assert_names(message, *parts)
    assert not os.path.exists(os.path.join(out, "run.json"))


def test_an_unknown_input_format_through_the_api():
    from pipeline.io import InputError

    with pytest.raises(InputError) as raised:
        read_stream(io.BytesIO(b"{}\n"), "a.jsonl", _layout(), input_format="xml")
    assert_names(
        str(raised.value), "--input_format must be one of jsonl, csv, tfrecord, parquet", "got 'xml'"
    )


def test_generate_output_named_after_no_format(tmp_path, capsys):
    output = str(tmp_path / "ads.dat")
    message = cli_error(["generate", "--output", output, "--records", "3"], capsys)
    assert_names(message, f"--output '{output}'", "cannot tell the format", "pass --format", "jsonl (.jsonl")
    assert not os.path.exists(output)


# ---------------------------------------------------------------------------------------------
# BigQuery inputs and outputs, against the local BigQuery server.

BIGQUERY_CASES = {
    "table_missing": (
        ["--input", "bq://{project}.error_messages.no_such_table"],
        ["BigQuery table bq://{project}.error_messages.no_such_table does not exist", "check its project"],
    ),
    "query_not_sql": (
        ["--input_query", "SELEC id FROM t", "--query_dataset", "{project}.error_messages"],
        ["--input_query is not valid standard SQL", "SELEC"],
    ),
    "query_dataset_missing": (
        ["--input_query", "SELECT 1 AS id", "--query_dataset", "{project}.no_such_dataset"],
        ["--query_dataset of --input_query does not exist", "no_such_dataset", "check its project, dataset"],
    ),
    "output_dataset_missing": (
        [
            "--input",
            "{data}",
            "--output_format",
            "bigquery",
            "--output_table",
            "bq://{project}.no_such_dataset.p",
        ],
        [
            "--output_table bq://{project}.no_such_dataset.p",
            "dataset {project}.no_such_dataset does not exist",
            "bq mk {project}:no_such_dataset",
        ],  # fmt: skip
    ),
}


@pytest.fixture(scope="module")
def bigquery_flags(google_cloud):
    from pipeline.io.bigquery import Connection

    flags = google_cloud["flags"]
    Connection(google_cloud["project"], flags[3], flags[5], anonymous=True).client().create_dataset(
        "error_messages", exists_ok=True
    )
    return {"flags": flags, "project": google_cloud["project"]}


@pytest.mark.parametrize(("flags", "parts"), list(BIGQUERY_CASES.values()), ids=list(BIGQUERY_CASES))
def test_bigquery_mistakes(flags, parts, bigquery_flags, trained_ads, tmp_path, capsys):
    fill = {"project": bigquery_flags["project"], "data": trained_ads["data"]}
    argv = ["predict", "--model_dir", trained_ads["model"], "--output_dir", str(tmp_path / "out")]
    argv += [flag.format(**fill) for flag in flags] + bigquery_flags["flags"]
    if flags[0] == "--input" and "does not exist" in parts[0]:  # a table not there (yet): exit 5
        message = cli_error(argv, capsys, EXIT_INPUT_NOT_READY, NOT_READY)
    else:
        message = cli_error(argv, capsys)
    assert_names(message, *(part.format(**fill) for part in parts))


@contextlib.contextmanager
def _refusing_server():
    """An HTTP endpoint that answers every BigQuery call 403, as Google does without access."""

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            body = json.dumps({"error": {"code": 403, "message": "Access Denied: permission bigquery.tables.get "
                                         "denied", "status": "PERMISSION_DENIED"}}).encode()  # fmt: skip
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_bigquery_refusing_a_read_names_the_table_and_the_credentials(trained_ads, tmp_path, capsys):
    with _refusing_server() as endpoint:
        message = cli_error(["predict", "--model_dir", trained_ads["model"], "--output_dir", str(tmp_path / "o"),
                             "--input", "bq://my-project.ads.impressions", "--project", "my-project",
                             "--bigquery_endpoint", endpoint, "--no_auth"], capsys)  # fmt: skip
    assert_names(message, "BigQuery refused bq://my-project.ads.impressions", "Access Denied", "credentials")


# ---------------------------------------------------------------------------------------------
# Error records: one per bad record, naming its file, line, field and what is wrong.


def _layout(**changes):
    from pipeline.inference.model import prediction_layout

    layout = prediction_layout(description_from_schema(load_schema("ads")), changes.pop("passthrough", None))
    return dataclasses.replace(layout, **changes)


@pytest.fixture(scope="module")
def good():
    from pipeline.sampledata.generate import generate_records

    return next(iter(generate_records(load_schema("ads"), 1, seed=5, first_id=7)))


def _jsonl(good, **changes) -> bytes:
    record = {k: v for k, v in {**good, **changes}.items() if v is not ...}
    return (json.dumps(record) + "\n").encode()


CSV_HEADER = ["id", "age", "gender", "media", "interests", "bid", "hour", "image"]


def _csv(good, header: bool = True, **changes) -> bytes:
    cells = {**good, "interests": "|".join(good["interests"]), **changes}
    row = ",".join(str(cells[name]) for name in CSV_HEADER).encode() + b"\n"
    return (",".join(CSV_HEADER).encode() + b"\n" if header else b"") + row


def _example(good, **changes) -> bytes:
    import tensorflow as tf

    example = tf.train.Example()
    for name, value in {**good, **changes}.items():
        values = value if isinstance(value, list) else [value]
        feature = example.features.feature[name]
        if values and isinstance(values[0], int):
            feature.int64_list.value.extend(values)
        elif values and isinstance(values[0], float):
            feature.float_list.value.extend(values)
        else:
            feature.bytes_list.value.extend(v if isinstance(v, bytes) else str(v).encode() for v in values)
    return _framed(example.SerializeToString())


def _framed(data: bytes) -> bytes:
    from pipeline.io.tfrecord import masked_crc

    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def _parquet(table: pa.Table, corrupt: bool = False) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out, compression="none", use_dictionary=False)
    data = bytearray(out.getvalue())
    if corrupt:  # the first page header, right after the magic: the footer still reads
        data[4:200] = b"\xff" * 196
    return bytes(data)


def _png_header(width: int, height: int) -> str:
    header = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", width, height)
    return base64.b64encode(header + b"\x08\x02\x00\x00\x00" + b"\x00" * 64).decode()


def _record_cases(good) -> dict:
    """id -> (file name, bytes, layout changes, code, field, words of the message)."""
    big = 10**30
    return {
        "jsonl_not_json": ("a.jsonl", b'{"id": "ad-1", age: 3}\n', {}, "malformed_record", None,
                           ["line is not valid JSON", "line 1 column"]),
        "jsonl_not_an_object": ("a.jsonl", b"[1, 2]\n", {}, "malformed_record", None,
                                ["expected a JSON object per line", "got an array"]),
        "jsonl_not_utf8": ("a.jsonl", _jsonl(good, gender="GENDER").replace(b"GENDER", b"m\xe9le"), {},
                           "malformed_record", "gender",
                           ["field 'gender'", "not UTF-8", "\\xe9", "re-encode the file as UTF-8"]),
        "jsonl_wrong_type": ("a.jsonl", _jsonl(good, age="old"), {}, "wrong_type", "age",
                             ["field 'age' must be an integer", 'got "old"']),
        "jsonl_untyped_passthrough_number": ("a.jsonl", _jsonl(good, campaign=5), {"passthrough": "campaign"},
                                             "wrong_type", "campaign",
                                             ["field 'campaign'", "got 5", "--passthrough_fields campaign:int"]),
        "jsonl_numeric_key": ("a.jsonl", _jsonl(good, id=17), {}, "wrong_type", "id",
                              ["field 'id' must be a string, got 17", "quote the key", "key: {type: int}"]),
        "jsonl_int_beyond_int64": ("a.jsonl", _jsonl(good, age=big), {}, "out_of_range", "age",
                                   ["field 'age'", str(big), "beyond the 64-bit integer range"]),
        "jsonl_int_key_beyond_int64": ("a.jsonl", _jsonl(good, id=big), {"key_type": "int"}, "out_of_range", "id",
                                       ["field 'id'", "beyond the 64-bit", "declare the key as text",
                                        "key: {type: string}"]),
        "jsonl_field_given_twice": ("a.jsonl", _jsonl(good)[:-2] + b', "age": 30}\n', {}, "malformed_record", None,
                                    ["could not be read as the declared types", "/age", "specified twice"]),
        "csv_not_utf8": ("a.csv", _csv(good, gender="GENDER").replace(b"GENDER", b"m\xe9le"), {},
                         "malformed_record", "gender", ["field 'gender'", "not UTF-8", "iconv"]),
        "csv_wrong_type_after_a_list_column": ("a.csv", _csv(good, bid="cheap"), {}, "wrong_type", "bid",
                                               ["field 'bid' must be a number", 'got "cheap"']),
        "csv_wrong_type_beside_a_large_cell": ("a.csv", _csv(good, age="old", image="/9j/" + "A" * 200_000), {},
                                               "wrong_type", "age", ["field 'age' must be an integer"]),
        "csv_value_only_python_reads": ("a.csv", _csv(good, age="+5"), {}, "malformed_record", None,
                                        ["row could not be read as the declared types", "column 'age'", "'+5'"]),
        "csv_column_count": ("a.csv", ",".join(CSV_HEADER).encode() + b"\nad-1,34\n", {}, "malformed_record",
                             None, ["expected 8 columns as in the header of a.csv, got 2"]),
        "csv_column_count_declared": ("a.csv", b"ad-1,34\n", {"csv_columns": tuple(CSV_HEADER)},
                                      "malformed_record", None, ["expected 8 columns as the declared csv_columns"]),
        "csv_unbalanced_quote": ("a.csv", _csv(good, gender='"male'), {}, "malformed_record", None,
                                 ["quoted field opened on this line is never closed", "close it", '""']),
        "csv_carriage_return": ("a.csv", _csv(good, gender="ma\rle"), {}, "malformed_record", None,
                                ["not valid CSV", "carriage return", "quote that field"]),
        "tfrecord_not_an_example": ("a.tfrecord", _framed(b"\xff\xff garbage"), {}, "malformed_record", None,
                                    ["not a serialized tf.Example"]),
        "tfrecord_wrong_kind": ("a.tfrecord", _example(good, age=b"old"), {}, "wrong_type", "age",
                                ["feature 'age' must be an int64_list", "declared int", "got a bytes_list"]),
        "tfrecord_several_values": ("a.tfrecord", _example(good, age=[30, 31]), {}, "wrong_type", "age",
                                    ["field 'age' must be an integer", "got [30, 31]"]),
        "tfrecord_truncated": ("a.tfrecord", _example(good) + _example(good)[:-10], {}, "malformed_record", None,
                               ["ends inside a record (truncated)", "at byte", "of a.tfrecord",
                                "replace the file with a complete copy"]),
        "parquet_unreadable": ("a.parquet", b"PAR1" + b"\x00" * 64, {}, "malformed_record", None,
                               ["a.parquet is not a readable Parquet file", "none of its rows"]),
        "parquet_row_group_corrupt": ("a.parquet", _parquet(pa.table({"id": ["ad-1"] * 500, "age": [30] * 500}),
                                      corrupt=True), {}, "malformed_record", None,
                                      ["row group 0 of a.parquet", "rows 1-500", "cannot be decoded"]),
        "parquet_wrong_type": ("a.parquet", _parquet(pa.table({"id": ["ad-1"], "age": [1.5]})), {}, "wrong_type",
                               "age", ["field 'age' must be an integer, got 1.5"]),
        "missing_key": ("a.jsonl", _jsonl(good, id=...), {}, "missing_field", "id",
                        ["no key field 'id'", "give every record a key", "key: {from: line}"]),
        "missing_required_field": ("a.jsonl", _jsonl(good, age=...), {}, "missing_field", "age",
                                   ["required field 'age' is missing or null", "give every record a value",
                                    "missing: rule"]),
        "not_finite": ("a.jsonl", _jsonl(good, bid=float("nan")), {}, "out_of_range", "bid",
                       ["field 'bid' is nan, not a finite number"]),
        "out_of_range": ("a.jsonl", _jsonl(good, age=150), {}, "out_of_range", "age",
                         ["field 'age' is 150, outside the valid range [13, 100]"]),
        "too_many_items": ("a.jsonl", _jsonl(good, interests=["sports"] * (MAX_LIST_ITEMS + 1)), {},
                           "out_of_range", "interests",
                           [f"field 'interests' has {MAX_LIST_ITEMS + 1} items", "MAX_LIST_ITEMS"]),
        "not_an_image": ("a.jsonl", _jsonl(good, image="aGVsbG8="), {}, "invalid_image", "image",
                         ["field 'image' is not a base64-encoded JPEG or PNG image"]),
        "image_too_many_bytes": ("a.jsonl", _jsonl(good, image="/9j/" + "A" * MAX_IMAGE_BYTES), {},
                                 "invalid_image", "image",
                                 ["field 'image' is", "base64 characters", "MAX_IMAGE_BYTES"]),
        "image_too_many_pixels": ("a.jsonl", _jsonl(good, image=_png_header(5000, 5000)), {}, "invalid_image",
                                  "image", ["field 'image' declares 5000 x 5000 pixels", "resize it"]),
    }  # fmt: skip


RECORD_CASES = [
    "jsonl_not_json", "jsonl_not_an_object", "jsonl_not_utf8", "jsonl_wrong_type",
    "jsonl_untyped_passthrough_number", "jsonl_numeric_key", "jsonl_int_beyond_int64",
    "jsonl_int_key_beyond_int64", "jsonl_field_given_twice", "csv_not_utf8",
    "csv_wrong_type_after_a_list_column", "csv_wrong_type_beside_a_large_cell", "csv_value_only_python_reads",
    "csv_column_count", "csv_column_count_declared", "csv_unbalanced_quote", "csv_carriage_return",
    "tfrecord_not_an_example", "tfrecord_wrong_kind", "tfrecord_several_values", "tfrecord_truncated",
    "parquet_unreadable", "parquet_row_group_corrupt", "parquet_wrong_type", "missing_key",
    "missing_required_field", "not_finite", "out_of_range", "too_many_items", "not_an_image",
    "image_too_many_bytes", "image_too_many_pixels",
]  # fmt: skip


@pytest.fixture(scope="module")
def record_cases(good):
    cases = _record_cases(good)
    assert sorted(cases) == sorted(RECORD_CASES)
    return cases


@pytest.mark.parametrize("case", RECORD_CASES)
def test_error_records(case, record_cases):
    name, data, changes, code, field, parts = record_cases[case]
    layout = _layout(**changes)
    blocks, failures = blocks_and_errors(read_stream(io.BytesIO(data), name, layout))
    for block in blocks:
        failures += validate_block(block, layout)[1]
    assert len(failures) >= 1 and {f["error"]["code"] for f in failures} == {code}, failures
    error = failures[0]
    assert error["source"].startswith(f"{name}:")
    assert error["error"]["field"] == field
    assert_names(error["error"]["message"], *parts)
    assert "\n" not in error["error"]["message"]


def _read_on_a_worker(path: str) -> list[dict]:
    """What the file-reading step of a run yields for `path`: its error records."""
    from pipeline.io.files import _ReadPartFn
    from pipeline.io.splitting import FilePart
    from pipeline.read import CheckedRecords

    layout = _layout()
    items = _ReadPartFn(layout, None, 1 << 20, CheckedRecords(layout)).process(
        FilePart(path, end=os.path.getsize(path)), {}
    )
    return [error for item in items if isinstance(item, list) for error in item]


def test_a_gzip_file_cut_short_is_one_error_naming_it(good, tmp_path):
    path = str(tmp_path / "ads.jsonl.gz")
    whole = gzip.compress(b"".join(_jsonl(good, id=f"ad-{i}") for i in range(40)))
    _write(path, whole[: len(whole) // 2])
    cut = [e for e in _read_on_a_worker(path) if "gzip" in e["error"]["message"]]
    assert len(cut) == 1
    assert_names(cut[0]["error"]["message"], path, "ends before its gzip end marker", "cut short",
                 "replace it with a complete copy")  # fmt: skip


def test_a_file_checked_on_a_worker_names_its_format(tmp_path):
    from pipeline.io import InputError

    path = _write(tmp_path / "late.jsonl", b"\x89PNG\r\n\x1a\n")  # past the 20 files checked at start
    with pytest.raises(InputError) as raised:
        _read_on_a_worker(path)
    assert_names(str(raised.value), path, "does not look like jsonl", "Formats:", "pass --input_format")


# ---------------------------------------------------------------------------------------------
# Schema files.


@pytest.mark.parametrize(
    ("content", "parts"),
    [
        (None, ["does not exist", "give a YAML file or one of ads, criteo"]),
        ("features: [a\n", ["not valid YAML: line 2, column 1: expected"]),
    ],
    ids=["missing", "not_yaml"],
)
def test_schema_file_mistakes_on_the_command_line(content, parts, tmp_path, capsys):
    schema = tmp_path / "my.yaml"
    if content is not None:
        schema.write_text(content)
    message = cli_error(
        ["analyze", "--schema", str(schema), "--input", "a.jsonl", "--output_dir", "o"], capsys
    )
    assert_names(message, str(schema), *parts)


def _feature(**settings) -> dict:
    return {"key": {"field": "id"}, "features": [{"name": "x", **settings}]}


Z = {"type": "float", "encoding": "z_score"}
SCHEMA_CASES = {
    "not_a_mapping": (["x"], ["expected a mapping with a 'features' list"]),
    "unknown_top_level_key": ({**_feature(**Z), "lable": {}}, ["unknown keys ['lable']", "known keys are"]),
    "unknown_key_setting": ({**_feature(**Z), "key": {"field": "id", "typ": "int"}}, ["key: unknown keys ['typ']"]),
    "no_features": ({"key": {"field": "id"}, "features": []}, ["'features' must be a non-empty list"]),
    "feature_twice": ({"key": {"field": "id"}, "features": [{"name": "x", **Z}] * 2}, ["features declared twice: x"]),
    "key_type": ({**_feature(**Z), "key": {"field": "id", "type": "float"}}, ["key type must be string or int",
                                                                               "got 'float'"]),
    "key_not_a_mapping": ({**_feature(**Z), "key": "id"}, ["'key' must be {field: <name>} or {from: line}"]),
    "label_not_a_mapping": ({**_feature(**Z), "label": "clicked"}, ["'label' must be {field: <name>}",
                                                                    "got 'clicked'"]),
    "key_is_a_feature": ({**_feature(**Z), "key": {"field": "x"}}, ["['x'] is the key or label",
                                                                    "remove it from features"]),
    "csv_columns_not_a_list": ({**_feature(**Z), "csv_columns": "x,y"}, ["csv_columns must be a list"]),
    "csv_columns_lack_a_feature": ({**_feature(**Z), "csv_columns": ["id"]}, ["csv_columns lacks the features ['x']"]),
    "feature_without_name": ({"key": {"field": "id"}, "features": [Z]}, ["each feature needs a 'name'"]),
    "unknown_feature_key": (_feature(**Z, colour=1), ["feature 'x'", "unknown keys ['colour']"]),
    "type": (_feature(type="number", encoding="z_score"), ["feature 'x'", "type must be one of", "got 'number'"]),
    "encoding": (_feature(type="int", encoding="vocab"), ["feature 'x'", "encoding must be one of", "got 'vocab'"]),
    "encoding_for_type": (_feature(type="string", encoding="z_score"), ["feature 'x'", "does not apply to type "
                                                                        "'string'", "use one of ['one_hot']"]),
    "top_k_not_an_integer": (_feature(type="string", encoding="one_hot", top_k="many"), ["feature 'x'", "top_k must "
                             "be an integer, got 'many'"]),
    "sample_not_a_mapping": (_feature(**Z, sample=3), ["feature 'x'", "sample must be a mapping", "got 3"]),
    "range_not_two_numbers": (_feature(**Z, range=5), ["feature 'x'", "range must be [min, max]", "got 5"]),
    "range_empty": (_feature(**Z, range=[9, 1]), ["feature 'x'", "range [9, 1] is empty", "[min, max]"]),
    "boundaries": (_feature(type="int", encoding="bucketize", boundaries=[5, 1]), ["feature 'x'", "boundaries must "
                   "be a non-empty increasing list of numbers", "got [5, 1]"]),
    "bucketize": (_feature(type="int", encoding="bucketize"), ["feature 'x'", "exactly one of boundaries or "
                  "num_buckets"]),
    "one_hot_int_range": (_feature(type="int", encoding="one_hot"), ["feature 'x'", "needs range: [min, max]"]),
    "image_size": (_feature(type="image", encoding="image", height=8), ["feature 'x'", "need height and width",
                                                                        "'width' missing"]),
    "image_size_not_an_integer": (_feature(type="image", encoding="image", height="tall", width=8),
                                  ["feature 'x'", "height must be an integer, got 'tall'"]),
    "channels": (_feature(type="image", encoding="image", height=8, width=8, channels=4),
                 ["feature 'x'", "channels must be 1 or 3, got 4"]),
    "required_with_missing_rule": (_feature(**Z, required=True, missing={}), ["feature 'x'", "cannot have a missing "
                                   "rule", "remove required: true or the missing rule"]),
    "missing_rule_shape": (_feature(**Z, missing={"value": 1}), ["feature 'x'", "missing must be {default: <value>, "
                           "indicator: true|false}"]),
    "int_indicator": (_feature(type="int", encoding="z_score", missing={"indicator": True}), ["feature 'x'",
                      "declare it type: float"]),
    "string_list_default": (_feature(type="string_list", encoding="multi_hot", missing={"default": ["a"]}),
                            ["feature 'x'", "a missing string_list is the empty list", "give no default"]),
    "image_default": (_feature(type="image", encoding="image", height=8, width=8, missing={"default": "x"}),
                      ["feature 'x'", "a missing image is all zeros; give no default"]),
    "default_type": (_feature(type="int", encoding="z_score", missing={"default": "zero"}),
                     ["feature 'x'", "default 'zero' is not an int"]),
}  # fmt: skip


@pytest.mark.parametrize(("doc", "parts"), list(SCHEMA_CASES.values()), ids=list(SCHEMA_CASES))
def test_schema_mistakes(doc, parts):
    with pytest.raises(SchemaError) as raised:
        parse_schema(doc, "my.yaml")
    assert_names(str(raised.value), "my.yaml: ", *parts)


# ---------------------------------------------------------------------------------------------
# Nightly configs and the parity gate.


def _nightly(tmp_path, capsys, config, *args, prefix="adpredict nightly: error: ", code=EXIT_USAGE) -> str:
    path = tmp_path / "nightly.yaml"
    if config is not None:
        path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    assert cli.main(["nightly", "--config", str(path), *args]) == code
    return one_error_line(capsys, prefix)


NIGHTLY = {"model_dir": "m", "input": "in/dt={date}/*.jsonl", "output_dir": "out/dt={date}"}
NIGHTLY_CASES = {
    "missing": (None, [], ["nightly config", "does not exist", "check --config"]),
    "not_yaml": ("model_dir: [\n", [], ["not valid YAML: line 2, column 1: expected"]),
    "not_a_mapping": ("- model_dir\n", [], ["expected a mapping of settings"]),
    "unknown_key": ({**NIGHTLY, "schedule": "daily"}, [], ["unknown keys ['schedule']", "known keys are"]),
    "model_dir_required": ({**NIGHTLY, "model_dir": ""}, [], ["'model_dir' is required"]),
    "no_input": ({k: v for k, v in NIGHTLY.items() if k != "input"}, [], ["give 'input'", "or 'input_query'"]),
    "output_dir_without_date": ({**NIGHTLY, "output_dir": "out"}, [], ["output_dir must contain {date}"]),
    "timezone": ({**NIGHTLY, "timezone": "Mars/Olympus"}, [], ["unknown timezone 'Mars/Olympus'", "Europe/Berlin"]),
    "parity_only_without_transform": (NIGHTLY, ["--date", DATE, "--parity_only"],
                                      ["--parity_only needs transform_dir in the nightly config"]),
    "backfill_backwards": (NIGHTLY, ["--backfill", "2026-11-26", "2026-11-01"],
                           ["--backfill: 2026-11-01 is before 2026-11-26", "--backfill 2026-11-01 2026-11-26"]),
}  # fmt: skip


@pytest.mark.parametrize(("config", "args", "parts"), list(NIGHTLY_CASES.values()), ids=list(NIGHTLY_CASES))
def test_nightly_config_mistakes(config, args, parts, tmp_path, capsys):
    message = _nightly(tmp_path, capsys, config, *args)
    assert_names(message, *parts)
    if not args:  # a mistake in the file names the file
        assert str(tmp_path / "nightly.yaml") in message


def test_nightly_date_that_is_not_a_date(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["nightly", "--config", "n.yaml", "--date", "26.11.2026"])
    assert exited.value.code == EXIT_USAGE
    assert "argument --date: invalid fromisoformat value: '26.11.2026'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def handmade_models(trained_ads, tmp_path_factory):
    """Model directories that follow the contract but whose transform is not the one analysed:
    no `transform_features` signature, a feature renamed, one reshaped, one shifted."""
    import tensorflow as tf

    work = tmp_path_factory.mktemp("handmade_models")
    real = tf.saved_model.load(trained_ads["model"])
    specs = real.signatures["transform_features"].structured_input_signature[1]
    changes = {
        "renamed": lambda out: {**{k: v for k, v in out.items() if k != "bid"}, "bid_renamed": out["bid"]},
        "reshaped": lambda out: {**out, "bid": tf.concat([out["bid"], out["bid"]], 0)},
        "skewed": lambda out: {**out, "bid": out["bid"] + 1.0},
    }

    def signature(change):
        @tf.function
        def transform_features(inputs):
            return change(dict(real.signatures["transform_features"](**inputs)))

        return transform_features.get_concrete_function(specs)

    models = {}
    for name in ("no_signature", *changes):
        module = tf.Module()
        module.real = real
        signatures = {"serving_default": real.signatures["serving_default"]}  # it scores: the contract
        if name in changes:
            signatures["transform_features"] = signature(changes[name])
        tf.saved_model.save(module, str(work / name), signatures=signatures)
        os.makedirs(work / name / "assets.extra")
        shutil.copy(os.path.join(trained_ads["model"], DESCRIPTION_PATH), work / name / DESCRIPTION_PATH)
        models[name] = str(work / name)
    return models


PARITY_CASES = {
    "no_valid_record": ["no valid record to compare in", "none of their records passes validation",
                        "without transform_dir"],
    "no_signature": ["has no 'transform_features' signature", "remove transform_dir from the nightly config"],
    "renamed": ["feature 'bid_renamed' of the model is not produced by the transform in",
                "set transform_dir to the analyze output the model was trained on"],
    "reshaped": ["feature 'bid': the model gives shape", "the transform in",
                 "set transform_dir to the analyze output the model was trained on"],
    "skewed": ["training/serving skew: feature 'bid' differs by up to 1", "between the model in",
               "set transform_dir to the analyze output", "re-train"],
}  # fmt: skip


@pytest.mark.parametrize(("case", "parts"), list(PARITY_CASES.items()), ids=list(PARITY_CASES))
def test_parity_gate_failures(case, parts, trained_ads, handmade_models, tmp_path, capsys):
    from pipeline.run_contract import EXIT_GATE

    data = trained_ads["data"]
    if case == "no_valid_record":  # every record out of the schema's range
        records = [{**json.loads(line), "age": 500} for line in open(data)][:20]
        data = _write(tmp_path / "bad.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
    config = {"model_dir": handmade_models.get(case, trained_ads["model"]), "input": data,
              "output_dir": str(tmp_path / "out" / "{date}"), "transform_dir": trained_ads["transform"]}  # fmt: skip
    message = _nightly(tmp_path, capsys, config, "--date", DATE, "--parity_only",
                       prefix=f"adpredict nightly {DATE}: failed: ", code=EXIT_GATE)  # fmt: skip
    assert_names(message, *parts)
    if case != "no_valid_record":
        assert_names(message, trained_ads["transform"] if case != "no_signature" else config["model_dir"])


def test_parity_gate_on_bigquery_inputs_only(bigquery_flags, trained_ads, tmp_path, capsys):
    from google.cloud import bigquery

    from pipeline.io.bigquery import Connection
    from pipeline.run_contract import EXIT_GATE

    project, flags = bigquery_flags["project"], bigquery_flags["flags"]
    client = Connection(project, flags[3], flags[5], anonymous=True).client()
    client.create_table(
        bigquery.Table(f"{project}.error_messages.nightly", [bigquery.SchemaField("id", "STRING")]),
        exists_ok=True,
    )
    config = {"model_dir": trained_ads["model"], "input": f"bq://{project}.error_messages.nightly",
              "output_dir": str(tmp_path / "out" / "{date}"), "transform_dir": trained_ads["transform"],
              "pipeline_args": flags}  # fmt: skip
    message = _nightly(tmp_path, capsys, config, "--date", DATE, "--parity_only",
                       prefix=f"adpredict nightly {DATE}: failed: ", code=EXIT_GATE)  # fmt: skip
    assert_names(message, "the parity gate samples files", "BigQuery only", "remove transform_dir")


# ---------------------------------------------------------------------------------------------
# Training.


def _transform_copy(trained_ads, tmp_path, case: str) -> str:
    import tensorflow as tf

    if case == "no_transform_output":
        return str(tmp_path / "not-analyzed")
    transform = str(tmp_path / "transform")
    shutil.copytree(trained_ads["transform"], transform)
    for path in tf.io.gfile.glob(os.path.join(transform, "transformed", "*")):
        tf.io.gfile.remove(path)  # no_transformed_data
    return transform


TRAINING_CASES = {
    "no_transform_output": ["--transform_dir", "holds no tf.Transform output", "transformed_metadata/",
                            "--output_dir of `adpredict analyze`"],
    "no_transformed_data": ["no transformed train data under", "/transformed", "run `adpredict analyze` first"],
}  # fmt: skip


@pytest.mark.parametrize(("case", "parts"), list(TRAINING_CASES.items()), ids=list(TRAINING_CASES))
def test_training_mistakes(case, parts, trained_ads, tmp_path, capsys):
    transform = _transform_copy(trained_ads, tmp_path, case)
    message = cli_error(["train", "--transform_dir", transform, "--model_dir", str(tmp_path / "model"),
                         "--epochs", "1", "--skip_blank_image_baseline"], capsys)  # fmt: skip
    assert_names(message, transform, *parts)
    assert not os.path.exists(tmp_path / "model")


def test_a_missing_file_from_the_system_names_the_path(capsys):
    import errno

    from pipeline.entrypoint import run_reporting_errors
    from pipeline.run_contract import EXIT_USAGE

    def run(_):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/ads/missing.yaml")

    assert run_reporting_errors(run, [], prog="adpredict predict") == EXIT_USAGE
    assert capsys.readouterr().err == (
        "adpredict predict: error: no such file or directory: '/data/ads/missing.yaml'; check the path you "
        "passed\n"
    )


def test_records_lost_is_one_line_and_its_own_exit_code(capsys):
    from pipeline.entrypoint import run_reporting_errors
    from pipeline.run_contract import EXIT_RECORDS_LOST, RecordsLost

    def run(_):
        raise RecordsLost("records read (10) != predictions (8) + errors (1)")

    assert run_reporting_errors(run, [], prog="adpredict predict") == EXIT_RECORDS_LOST == 6
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "records read (10) != predictions (8) + errors (1)" in err
