"""The data-quality gate on real runs: each kind of bad night caught with the right verdict,
a clean night passing, warn vs block, accepting a reviewed night, drift against the previous
night (also for a model without a training profile), duplicate keys, and the measures."""

import json
import os
import random
import shutil

import numpy as np
import pyarrow as pa
import pytest
import yaml

from pipeline import cli
from pipeline.quality import gate
from pipeline.quality.profiling import KeyArraysCoder, KeyCountsFn, key_partitions
from pipeline.quality.thresholds import parse_policy
from pipeline.run_contract import BLOCKED, EXIT_BLOCKED, EXIT_OK, STAGING_DIR, SUCCEEDED, OptionsError
from pipeline.sampledata.generate import generate_records
from transforms.data_profile import DataProfile, LogHistogram
from transforms.model_contract import TRAINING_PROFILE_FILE
from transforms.schema import load_schema

NIGHT = 400  # records of a night: enough for a gross shift to trip the gate


def write_night(path, records: int, seed: int, change=None, first_id: int = 0) -> str:
    """A JSONL file of `records` generated ad records, each passed through `change(record, rng)`."""
    rng = random.Random(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for record in generate_records(load_schema("ads"), records, seed, first_id):
            f.write(json.dumps(change(record, rng) if change else record) + "\n")
    return str(path)


def predict(model, data, out, *flags) -> tuple[int, dict]:
    code = cli.main(["predict", "--model_dir", model, "--input", data, "--output_dir", str(out), *flags])
    return code, json.loads((out / "run.json").read_text())


def flagged(manifest) -> dict:
    """subject -> level of the subjects the gate flagged."""
    return {f["subject"]: f["level"] for f in manifest["quality"]["flagged"]}


def published(out) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith(("prediction.results", "errors-")))


def bid_in_cents(record, rng):
    if "bid" in record:
        record["bid"] = record["bid"] * 100  # a unit change upstream
    return record


def new_media(share):
    def change(record, rng):
        if rng.random() < share:
            record["media"] = "Snapchat"  # a network the model never saw
        return record

    return change


def without_bid(record, rng):
    record.pop("bid", None)  # an optional feature gone missing
    return record


def test_a_clean_night_passes_every_skew_check(trained_ads, tmp_path):
    data = write_night(tmp_path / "clean.jsonl", NIGHT, seed=101)
    code, manifest = predict(trained_ads["model"], data, tmp_path / "out")
    quality = manifest["quality"]
    assert code == EXIT_OK and manifest["status"] == SUCCEEDED
    assert quality["verdict"] == gate.PASSED and quality["flagged"] == []
    assert quality["skew"]["checked"] and not quality["drift"]["checked"]
    subjects = {c["subject"] for c in quality["checks"]}
    assert {"age", "gender", "media", "interests", "bid", "hour", "image", "output probability"} <= subjects
    assert all(c["value"] is not None and c["value"] < c["warn"] + c["allowance"] for c in quality["checks"])
    assert quality["duplicate_keys"] == {"extra_records": 0, "keys": 0, "examples": []}
    assert (tmp_path / "out" / "_SUCCESS").exists()


@pytest.mark.parametrize(
    "change, subject, measure",
    [
        (bid_in_cents, "bid", "Jensen-Shannon"),
        (new_media(0.7), "media", "L-infinity"),
        (without_bid, "bid", "missing share"),
    ],
    ids=["shifted-number", "new-dominant-category", "feature-gone-missing"],
)
def test_a_grossly_shifted_night_is_blocked_and_publishes_nothing(
    trained_ads, tmp_path, change, subject, measure
):
    data = write_night(tmp_path / "night.jsonl", NIGHT, seed=102, change=change)
    out = tmp_path / "out"
    code, manifest = predict(trained_ads["model"], data, out)
    assert code == EXIT_BLOCKED and manifest["status"] == BLOCKED
    assert flagged(manifest)[subject] == gate.BLOCK
    worst = [c for c in manifest["quality"]["checks"] if c["subject"] == subject and c["level"] == gate.BLOCK]
    assert [c["measure"] for c in worst] == [measure] and worst[0]["against"] == gate.TRAINING
    assert worst[0]["value"] > worst[0]["block"] + worst[0]["allowance"]
    # Everything written, nothing published: the results wait in staging, no _SUCCESS.
    assert published(out) == [] and not (out / "_SUCCESS").exists()
    staged = sorted(p.name for p in (out / STAGING_DIR).iterdir())
    assert any(n.startswith("prediction.results") for n in staged)
    assert (out / "report.html").exists() and manifest["counts"]["predictions"] == NIGHT


def test_a_smaller_shift_warns_and_publishes(trained_ads, tmp_path, capsys):
    data = write_night(tmp_path / "night.jsonl", NIGHT, seed=103, change=new_media(0.7))
    code, manifest = predict(
        trained_ads["model"], data, tmp_path / "out", "--quality_threshold", "feature.media=0.1:off"
    )
    assert code == EXIT_OK and manifest["status"] == SUCCEEDED
    assert manifest["quality"]["verdict"] == gate.WARNED and flagged(manifest)["media"] == gate.WARN
    assert manifest["quality"]["thresholds"]["feature.media"] == "0.1:off"
    assert (tmp_path / "out" / "_SUCCESS").exists() and published(tmp_path / "out")


def test_accept_drift_publishes_a_reviewed_night(trained_ads, tmp_path):
    data = write_night(tmp_path / "night.jsonl", NIGHT, seed=104, change=bid_in_cents)
    code, manifest = predict(trained_ads["model"], data, tmp_path / "out", "--accept_drift")
    assert code == EXIT_OK and manifest["status"] == SUCCEEDED
    assert manifest["quality"]["verdict"] == gate.ACCEPTED and flagged(manifest)["bid"] == gate.BLOCK
    assert (tmp_path / "out" / "_SUCCESS").exists() and published(tmp_path / "out")


def test_a_handful_of_shifted_records_never_trips_the_gate(trained_ads, tmp_path, capsys):
    data = write_night(tmp_path / "few.jsonl", 10, seed=105, change=bid_in_cents)
    code, manifest = predict(trained_ads["model"], data, tmp_path / "out")
    assert code == EXIT_OK and manifest["quality"]["verdict"] == gate.PASSED
    bid = next(
        c for c in manifest["quality"]["checks"] if c["subject"] == "bid" and c["measure"] == "Jensen-Shannon"
    )
    assert bid["value"] > 0.9 and bid["allowance"] > 1  # measured, but 10 records say nothing
    assert all(c["too_few_records"] == gate.MIN_RECORDS for c in manifest["quality"]["checks"])
    checks = len(manifest["quality"]["checks"])
    assert f"{checks} not judged: under {gate.MIN_RECORDS} records" in capsys.readouterr().out


def test_the_gate_can_be_turned_off(trained_ads, tmp_path):
    data = write_night(tmp_path / "night.jsonl", 50, seed=106, change=bid_in_cents)
    code, manifest = predict(trained_ads["model"], data, tmp_path / "out", "--quality_gate", "off")
    assert code == EXIT_OK and "quality" not in manifest


def test_duplicate_keys_are_counted_and_every_record_still_scored(trained_ads, tmp_path):
    path = write_night(tmp_path / "night.jsonl", 60, seed=107)
    lines = open(path).read().splitlines()
    with open(path, "a") as f:  # an upstream join that went wrong: 3 records twice, one 3 times
        f.write("\n".join(lines[:3] + [lines[0]]) + "\n")
    code, manifest = predict(trained_ads["model"], path, tmp_path / "out")
    assert code == EXIT_OK and manifest["counts"]["predictions"] == 64
    first = json.loads(lines[0])["id"]
    duplicates = manifest["quality"]["duplicate_keys"]
    assert duplicates["extra_records"] == 4 and duplicates["keys"] == 3
    assert duplicates["examples"][0] == [first, 3]


@pytest.mark.parametrize("entry", ["distance=0.5", "distance=x:0.3", "colour=0.1:0.2", "missing=0.4:0.2"])
def test_a_wrong_threshold_is_one_line_exit_2(trained_ads, tmp_path, entry, capsys):
    data = write_night(tmp_path / "night.jsonl", 5, seed=108)
    code = cli.main(["predict", "--model_dir", trained_ads["model"], "--input", data,
                     "--output_dir", str(tmp_path / "out"), "--quality_threshold", entry])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--quality_threshold" in err and entry in err and "Traceback" not in err


# --- Nightly: drift against the previous night ----------------------------------------------

DATES = ("2026-11-20", "2026-11-21", "2026-11-22")


@pytest.fixture()
def nights(trained_ads, tmp_path):
    """A nightly config over out/dt={date}; `write(date, records, seed, change)` makes a night."""
    config = {
        "model_dir": trained_ads["model"],
        "input": str(tmp_path / "ads" / "dt={date}" / "*.jsonl"),
        "output_dir": str(tmp_path / "out" / "dt={date}"),
    }

    def write(date, records=NIGHT, seed=0, change=None):
        write_night(tmp_path / "ads" / f"dt={date}" / "part-0.jsonl", records, seed, change)

    def configure(**settings):
        (tmp_path / "nightly.yaml").write_text(yaml.safe_dump({**config, **settings}))

    def run(date, *flags):
        code = cli.main(["nightly", "--config", str(tmp_path / "nightly.yaml"), "--date", date, *flags])
        return code, json.loads((tmp_path / "out" / f"dt={date}" / "run.json").read_text())

    configure()
    return {"write": write, "configure": configure, "run": run, "dir": tmp_path}


def test_half_the_usual_volume_is_blocked_against_the_last_nights(nights):
    nights["write"](DATES[0], NIGHT, seed=110)
    nights["write"](DATES[1], NIGHT // 2, seed=111)
    assert nights["run"](DATES[0])[0] == EXIT_OK
    code, manifest = nights["run"](DATES[1])
    assert code == EXIT_BLOCKED and flagged(manifest) == {"volume": gate.BLOCK}
    volume = next(c for c in manifest["quality"]["checks"] if c["subject"] == "volume")
    assert volume["value"] == 0.5 and volume["usual"] == NIGHT and volume["against"] == gate.PREVIOUS
    assert f"dt={DATES[0]}" in manifest["quality"]["drift"]["reference"]


def test_a_model_without_a_training_profile_gets_drift_and_says_skew_was_not_checked(nights, trained_ads):
    model = nights["dir"] / "foreign-model"
    shutil.copytree(trained_ads["model"], model)
    os.remove(model / TRAINING_PROFILE_FILE)
    nights["configure"](model_dir=str(model), quality_thresholds={"volume": "off:off"})
    nights["write"](DATES[0], NIGHT, seed=112)
    nights["write"](DATES[1], NIGHT, seed=113, change=new_media(0.7))
    code, first = nights["run"](DATES[0])
    assert code == EXIT_OK and first["quality"]["verdict"] == gate.PASSED
    assert (
        not first["quality"]["skew"]["checked"] and "no training profile" in first["quality"]["skew"]["why"]
    )
    assert not first["quality"]["drift"]["checked"]  # the first night has none before it
    code, second = nights["run"](DATES[1])
    assert code == EXIT_BLOCKED and flagged(second)["media"] == gate.BLOCK
    assert {c["against"] for c in second["quality"]["checks"]} == {gate.PREVIOUS}
    assert second["quality"]["drift"]["checked"] and not second["quality"]["skew"]["checked"]


def test_a_blocked_night_is_not_the_next_nights_baseline_and_accept_drift_passes_through(nights):
    nights["write"](DATES[0], NIGHT, seed=114)
    nights["write"](DATES[1], NIGHT, seed=115, change=bid_in_cents)
    nights["write"](DATES[2], NIGHT, seed=116)
    assert nights["run"](DATES[0])[0] == EXIT_OK
    assert nights["run"](DATES[1])[0] == EXIT_BLOCKED
    code, third = nights["run"](DATES[2])
    assert code == EXIT_OK and f"dt={DATES[0]}" in third["quality"]["drift"]["reference"]
    code, reviewed = nights["run"](DATES[1], "--accept_drift")  # a person looked: publish it
    assert code == EXIT_OK and reviewed["quality"]["verdict"] == gate.ACCEPTED
    assert (nights["dir"] / "out" / f"dt={DATES[1]}" / "_SUCCESS").exists()


# --- The measures and their pieces ------------------------------------------------------------


def test_jensen_shannon_is_0_for_the_same_and_1_for_disjoint_distributions():
    assert gate.jensen_shannon(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0
    assert gate.jensen_shannon(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)


def test_the_allowance_covers_two_samples_of_the_same_data():
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(200):
        tonight, reference = LogHistogram(), LogHistogram()
        tonight.add(rng.lognormal(size=400))
        reference.add(rng.lognormal(size=600))
        distance, bins = gate.histogram_distance(tonight, reference)
        worst = max(
            worst, distance / (gate.histogram_allowance(400, bins) + gate.histogram_allowance(600, bins))
        )
    assert worst < 1  # never over the allowance (nor close: the bound is conservative)
    assert gate.histogram_allowance(10, 12) > 1 and gate.shares_allowance(10, 5) > 0.5
    shifted = LogHistogram()
    shifted.add(rng.lognormal(size=400) * 100)
    distance, bins = gate.histogram_distance(shifted, reference)
    assert distance > 0.3 + gate.histogram_allowance(400, bins) + gate.histogram_allowance(600, bins)


def test_profiles_merge_to_what_one_pass_gives():
    rng = np.random.default_rng(1)
    batch = pa.RecordBatch.from_pydict({
        "bid": pa.array(rng.lognormal(size=1000)),
        "media": pa.array(rng.choice(["a", "b", "c"], 1000).tolist()),
        "tags": pa.array([["x", "y"][: i % 3] for i in range(1000)]),
    })  # fmt: skip
    fields = [("bid", "float"), ("media", "string"), ("tags", "string_list")]
    whole, parts = DataProfile(fields), [DataProfile(fields), DataProfile(fields)]
    whole.add_batch(batch)
    parts[0].add_batch(batch.slice(0, 300))
    parts[1].add_batch(batch.slice(300))
    parts[0].merge(parts[1])
    one, merged = whole.to_json(), parts[0].to_json()
    assert one["features"]["bid"]["histogram"] == merged["features"]["bid"]["histogram"]
    assert one["features"]["media"]["top_values"] == merged["features"]["media"]["top_values"]
    assert one["features"]["tags"]["histogram"]["counts"] == [334, 333, 333]


def test_keys_are_counted_across_blocks_and_parts():
    keys = pa.array([f"ad-{i % 700}" for i in range(1000)])
    assert (key_partitions(keys.slice(0, 700), 16) == key_partitions(keys.slice(700 - 700, 700), 16)).all()
    assert (key_partitions(keys, 16)[:300] == key_partitions(keys, 16)[700:]).all()
    fn = KeyCountsFn()
    first = fn.add_input(fn.create_accumulator(), keys.slice(0, 500))
    second = fn.add_input(fn.create_accumulator(), keys.slice(500))
    found = fn.extract_output(fn.merge_accumulators([first, second]))
    assert found["extra_records"] == 300 and found["keys"] == 300
    assert found["examples"] == [[f"ad-{i}", 2] for i in range(5)]  # the first seen first
    distinct = fn.extract_output(fn.add_input(fn.create_accumulator(), keys.slice(0, 700)))
    assert distinct == {"extra_records": 0, "keys": 0, "examples": []}


def test_key_arrays_cross_stages_as_one_ipc_stream_of_only_their_rows():
    coder = KeyArraysCoder()
    keys = pa.array([f"ad-{i}" for i in range(10_000)])
    arrays = [keys.slice(9_000, 3), pa.array(["x", None], pa.large_string()), keys.slice(0, 0)]
    decoded = coder.decode(coder.encode(arrays))
    assert [a.to_pylist() for a in decoded] == [["ad-9000", "ad-9001", "ad-9002"], ["x", None], []]
    assert all(a.type == pa.string() for a in decoded)
    assert len(coder.encode([keys.slice(9_000, 3)])) < len(coder.encode([keys])) // 50
    assert coder.decode(coder.encode([])) == []
    numbers = coder.decode(coder.encode([pa.array([7, 8], pa.int64())]))
    assert numbers[0].to_pylist() == [7, 8]


def test_thresholds_parse_with_off_and_per_feature_limits():
    policy = parse_policy(["distance=0.2:0.5", "feature.bid=0.1:off", "volume=off:off"])
    assert (
        policy.for_check("distance", "bid").block is None and policy.for_check("distance", "age").block == 0.5
    )
    assert policy.to_json()["volume"] == "off:off"
    with pytest.raises(OptionsError, match="warn level 0.4 is above"):
        parse_policy({"missing": "0.4:0.2"}, where="nightly.yaml: quality_thresholds")


def test_the_exported_model_carries_the_training_profile(trained_ads):
    profile = json.loads(open(os.path.join(trained_ads["model"], TRAINING_PROFILE_FILE)).read())
    features = profile["features"]
    kinds = {name: doc["kind"] for name, doc in features.items()}
    assert kinds == {"age": "number", "gender": "category", "media": "category", "interests": "list",
                     "bid": "number", "hour": "number", "image": "image"}  # fmt: skip
    assert profile["records"] == 600 and all(doc["records"] == 600 for doc in features.values())
    assert 0 < features["bid"]["missing"] < 100  # the generator leaves ~5% out
    media = features["media"]
    assert sorted(media["vocabulary"]) == ["Facebook", "Instagram", "TikTok", "Twitter", "YouTube"]
    assert media["out_of_vocabulary"] == 0 and sum(c for _, c in media["top_values"]) == media["values"]
    probability = profile["outputs"]["probability"]
    assert probability["records"] == trained_ads["metrics"]["eval_records"]
    assert 0 < probability["mean"] < 1 and probability["std"] > 0


def test_error_records_are_counted_per_field_not_profiled():
    profile = DataProfile([("image", "image"), ("age", "int")])
    profile.add_errors(
        [{"error": {"field": "image"}}, {"error": {"field": "image"}}, {"error": {"field": None}}]
    )
    found = profile.to_json()["features"]
    assert found["image"]["errors"] == 2 and found["image"]["records"] == 0 and found["age"]["errors"] == 0


def test_duplicate_keys_can_be_left_uncounted(trained_ads, tmp_path):
    data = write_night(tmp_path / "night.jsonl", 20, seed=109)
    code, manifest = predict(trained_ads["model"], data, tmp_path / "out", "--duplicate_keys", "off")
    assert code == EXIT_OK and manifest["quality"]["duplicate_keys"] is None
    assert manifest["quality"]["verdict"] == gate.PASSED


def test_a_tiny_night_is_judged_on_volume_and_a_zero_usual_is_not_compared():
    policy = parse_policy([])
    assert gate.volume_check(50, [1_000_000, 990_000], policy)["level"] == gate.BLOCK
    assert gate.volume_check(500, [0], policy)["value"] is None


def test_blocks_sampled_at_different_strides_add_up_to_all_their_rows():
    big = pa.RecordBatch.from_pydict({"media": ["old"] * 60_000, "bid": [0.0] * 60_000})
    small = pa.RecordBatch.from_pydict({"media": ["new"] * 4_000, "bid": [1.0] * 4_000})
    profile = DataProfile([("media", "string"), ("bid", "float")])
    profile.add_batch(big)  # sampled: every 15th row
    profile.add_batch(small)  # whole
    found = profile.to_json()["features"]
    shares = dict(found["media"]["top_values"])
    assert shares["new"] / found["media"]["values"] == pytest.approx(4_000 / 64_000, rel=0.01)
    assert found["bid"]["mean"] == pytest.approx(4_000 / 64_000, rel=0.01)
    assert found["bid"]["profiled"] == 4_000 + 4_000  # the sample size the allowance uses


def test_one_outlier_does_not_blind_the_histogram_check():
    rng = np.random.default_rng(2)
    training, training_with_outlier = LogHistogram(), LogHistogram()
    training.add(rng.normal(40, 10, 4000))
    training_with_outlier.add(np.append(rng.normal(40, 10, 3999), 1e7))
    shifted, shifted_with_outlier = LogHistogram(), LogHistogram()
    shifted.add(rng.normal(60, 10, 4000))
    shifted_with_outlier.add(np.append(rng.normal(60, 10, 3999), 1e7))
    clean = gate.histogram_distance(shifted, training)[0]
    assert (
        clean > 0.4
    )  # a shift of two standard deviations (a grid over [min, max] gave 0.0001 with the outlier)
    assert gate.histogram_distance(shifted_with_outlier, training)[0] == pytest.approx(clean, abs=0.05)
    assert gate.histogram_distance(shifted, training_with_outlier)[0] == pytest.approx(clean, abs=0.05)
