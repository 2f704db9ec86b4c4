"""BigQuery in and out, against a local BigQuery server (Storage Read API, load jobs, queries)."""

import io
import json
import os

import pytest

from pipeline import analyze, cli, predict
from pipeline.io.bigquery import Connection
from pipeline.run_contract import BLOCKED, EXIT_BLOCKED, EXIT_INPUT_NOT_READY, EXIT_USAGE

DATASET = "ads"


@pytest.fixture(scope="module")
def bigquery(google_cloud, score_records):
    """A client, and a dataset with `impressions` (the score records, two of them bad) and
    `impressions_typed_wrong` (age as STRING)."""
    from google.cloud import bigquery

    flags = google_cloud["flags"]
    connection = Connection(google_cloud["project"], flags[3], flags[5], anonymous=True)
    client = connection.client()
    client.create_dataset(DATASET, exists_ok=True)
    schema = [
        bigquery.SchemaField("id", "STRING"),
        bigquery.SchemaField("age", "INT64"),
        bigquery.SchemaField("gender", "STRING"),
        bigquery.SchemaField("media", "STRING"),
        bigquery.SchemaField("interests", "STRING", mode="REPEATED"),
        bigquery.SchemaField("bid", "FLOAT64"),
        bigquery.SchemaField("hour", "INT64"),
        bigquery.SchemaField("image", "STRING"),
        bigquery.SchemaField("clicked", "INT64"),
        bigquery.SchemaField("campaign", "INT64"),
    ]
    rows = [{**r, "campaign": 100 + i % 3} for i, r in enumerate(score_records)]
    rows.append({**rows[0], "id": "null-gender", "gender": None})  # NULL in a required field
    rows.append({**rows[1], "id": "old-age", "age": 130})  # outside the schema's range
    load(client, f"{DATASET}.impressions", schema, rows)
    typed_wrong = [f if f.name != "age" else bigquery.SchemaField("age", "STRING") for f in schema]
    wrong_rows = [{**r, "age": str(r["age"])} for r in rows[:3]] + [{**rows[3], "age": "old"}]
    load(client, f"{DATASET}.impressions_typed_wrong", typed_wrong, wrong_rows)
    return {
        "client": client,
        "flags": flags,
        "project": google_cloud["project"],
        "bucket": google_cloud["bucket"],
    }


def load(client, table: str, schema, rows: list[dict]) -> None:
    from google.cloud import bigquery

    data = "".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows)
    config = bigquery.LoadJobConfig(
        schema=schema, source_format="NEWLINE_DELIMITED_JSON", write_disposition="WRITE_TRUNCATE"
    )
    client.load_table_from_file(io.BytesIO(data.encode()), table, job_config=config).result()


def table_rows(client, table: str) -> list[dict]:
    return [dict(row) for row in client.query(f"SELECT * FROM `{table}`").result()]


def bq(project: str, table: str) -> str:
    return f"bq://{project}.{DATASET}.{table}"


def test_bigquery_table_to_bigquery_tables(bigquery, trained_ads, reference_predictions, tmp_path):
    project, client = bigquery["project"], bigquery["client"]
    argv = ["--model_dir", trained_ads["model"], "--input", bq(project, "impressions"), "--output_dir",
            str(tmp_path), "--output_format", "bigquery", "--output_table", bq(project, "predictions"),
            "--passthrough_fields", "campaign,media", "--max_error_rate", "1", *bigquery["flags"]]  # fmt: skip
    manifest = predict.run(argv)
    assert manifest["counts"] == {**manifest["counts"], "read": 52, "predictions": 50, "errors": 2}
    assert os.path.exists(tmp_path / "_SUCCESS")
    assert manifest["inputs"]["files"][0]["rows"] == 52  # what BigQuery reported before the run
    assert manifest["counts"]["bigquery_rows_loaded"] == {"predictions": 50, "errors": 2}
    assert manifest["output_tables"]["errors"] == bq(project, "predictions_errors")
    assert json.loads((tmp_path / "prediction.errors_stats").read_text())["errors"] == 2

    predictions = table_rows(client, f"{project}.{DATASET}.predictions")
    assert sorted(row["key"] for row in predictions) == sorted(reference_predictions)
    assert max(abs(row["probability"] - reference_predictions[row["key"]]) for row in predictions) < 1e-6
    assert {row["campaign"] for row in predictions} == {"100", "101", "102"}  # undeclared: text
    errors = {row["key"]: row for row in table_rows(client, f"{project}.{DATASET}.predictions_errors")}
    assert sorted(errors) == ["null-gender", "old-age"]
    assert errors["null-gender"]["error"]["code"] == "missing_field"
    assert errors["old-age"]["error"] == {
        "code": "out_of_range",
        "field": "age",
        "message": "field 'age' is 130, outside the valid range [13, 100]",
    }
    assert json.loads(errors["old-age"]["instance"])["age"] == 130

    # A re-run truncates (same rows); --write_disposition append adds to them.
    predict.run(argv)
    assert len(table_rows(client, f"{project}.{DATASET}.predictions")) == 50
    predict.run([*argv, "--write_disposition", "append"])
    assert len(table_rows(client, f"{project}.{DATASET}.predictions")) == 100
    assert len(table_rows(client, f"{project}.{DATASET}.predictions_errors")) == 4


def test_filtered_table_and_query_inputs_to_files(bigquery, trained_ads, reference_predictions, tmp_path):
    project = bigquery["project"]
    common = ["--model_dir", trained_ads["model"], "--max_error_rate", "1", *bigquery["flags"]]
    filtered = predict.run([*common, "--input", bq(project, "impressions"), "--input_filter", "hour < 12",
                            "--output_dir", str(tmp_path / "filtered")])  # fmt: skip
    queried = predict.run([*common, "--input_query", f"SELECT * FROM `{project}.{DATASET}.impressions` "
                           "WHERE hour < 12", "--query_dataset", f"{project}.{DATASET}",
                           "--output_dir", str(tmp_path / "query")])  # fmt: skip
    for manifest, out in ((filtered, tmp_path / "filtered"), (queried, tmp_path / "query")):
        rows = [json.loads(line) for path in out.glob("prediction.results-*") for line in open(path)]
        assert rows and len(rows) == manifest["counts"]["predictions"] < 50
        assert all(abs(r["prediction"]["probability"] - reference_predictions[r["key"]]) < 1e-6 for r in rows)
    assert filtered["counts"] == {**filtered["counts"], "read": queried["counts"]["read"]}


def test_a_column_of_the_wrong_type_is_one_error_per_row(bigquery, trained_ads, tmp_path):
    manifest = predict.run(["--model_dir", trained_ads["model"], "--input",
                            bq(bigquery["project"], "impressions_typed_wrong"), "--output_dir", str(tmp_path),
                            "--max_error_rate", "1", *bigquery["flags"]])  # fmt: skip
    assert (manifest["counts"]["read"], manifest["counts"]["errors"]) == (4, 4)
    errors = [json.loads(line) for path in tmp_path.glob("errors-*") for line in open(path)]
    assert {(e["error"]["code"], e["error"]["field"]) for e in errors} == {("wrong_type", "age")}
    assert any(e["error"]["message"] == "field 'age' must be an integer, got \"old\"" for e in errors)


def test_staged_on_cloud_storage_the_load_goes_by_uri(bigquery, trained_ads, reference_predictions, tmp_path):
    project = bigquery["project"]
    predict.run(["--model_dir", trained_ads["model"], "--input", bq(project, "impressions"),
                 "--output_dir", f"{bigquery['bucket']}/bq-run", "--temp_location", f"{bigquery['bucket']}/tmp",
                 "--output_format", "bigquery", "--output_table", bq(project, "predictions_gcs"),
                 "--max_error_rate", "1", *bigquery["flags"]])  # fmt: skip
    rows = table_rows(bigquery["client"], f"{project}.{DATASET}.predictions_gcs")
    assert sorted(r["key"] for r in rows) == sorted(reference_predictions)
    from apache_beam.io.filesystems import FileSystems

    assert not FileSystems.match([f"{bigquery['bucket']}/tmp/_bigquery_staging/**"])[0].metadata_list


def test_analyze_reads_a_bigquery_table(bigquery, tmp_path):
    out = tmp_path / "transform"
    analyze.run(["--schema", "ads", "--input", bq(bigquery["project"], "impressions"), "--output_dir", str(out),
                 "--max_error_rate", "0.05", *bigquery["flags"]])  # fmt: skip
    assert (out / "transform_fn" / "saved_model.pb").exists()
    errors = [json.loads(line) for path in out.glob("errors-*") for line in open(path)]
    assert sorted(e["key"] for e in errors) == ["null-gender", "old-age"]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--input", "bq://{project}.ads.no_such_table", "does not exist"),
        ("--input_query", "SELEC id FROM ads.impressions", "not valid standard SQL"),
        ("--input_query", "SELECT id FROM ads.impressions", "needs --query_dataset"),
        ("--output_table", "bq://{project}.no_such_dataset.predictions", "dataset"),
    ],
)
def test_missing_table_bad_query_and_missing_dataset_stop_before_the_run(
    flag, value, message, bigquery, trained_ads, tmp_path, capsys
):
    project = bigquery["project"]
    argv = ["predict", "--model_dir", trained_ads["model"], "--output_dir", str(tmp_path), *bigquery["flags"]]
    if flag == "--output_table":
        argv += ["--input", bq(project, "impressions"), "--output_format", "bigquery"]
    argv += [flag, value.format(project=project)]
    if "SELEC " in value:
        argv += ["--query_dataset", f"{project}.{DATASET}"]
    # A table not there may be tonight's, not yet loaded: a scheduler retries (exit 5).
    assert cli.main(argv) == (EXIT_INPUT_NOT_READY if message == "does not exist" else EXIT_USAGE)
    err = capsys.readouterr().err
    assert message in err and not os.path.exists(tmp_path / "run.json")


def test_a_night_the_quality_gate_blocks_loads_nothing_into_the_tables(bigquery, trained_ads, tmp_path):
    from tests.test_quality_gate import NIGHT, bid_in_cents, write_night

    project, client = bigquery["project"], bigquery["client"]
    table = bq(project, "predictions_gated")
    clean = write_night(tmp_path / "clean.jsonl", NIGHT, seed=120)
    shifted = write_night(tmp_path / "shifted.jsonl", NIGHT, seed=121, change=bid_in_cents)

    def run(data, out):
        return cli.main(["predict", "--model_dir", trained_ads["model"], "--input", data, "--output_dir",
                         str(tmp_path / out), "--output_format", "bigquery", "--output_table", table,
                         *bigquery["flags"]])  # fmt: skip

    assert run(clean, "clean") == 0
    before = sorted(row["key"] for row in table_rows(client, f"{project}.{DATASET}.predictions_gated"))
    assert len(before) == NIGHT
    assert run(shifted, "shifted") == EXIT_BLOCKED  # the default disposition would truncate the table
    after = sorted(row["key"] for row in table_rows(client, f"{project}.{DATASET}.predictions_gated"))
    assert after == before  # last night's rows stay; tonight's were not loaded
    manifest = json.loads((tmp_path / "shifted" / "run.json").read_text())
    assert manifest["status"] == BLOCKED and not (tmp_path / "shifted" / "_SUCCESS").exists()
    assert manifest["counts"]["bigquery_rows_loaded"] == {"predictions": 0, "errors": 0}
    assert manifest["counts"]["predictions"] == NIGHT and manifest["problems"] == []
