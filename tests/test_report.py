"""report.html: written by the pipeline's last step, self-contained, true to run.json, and
rendered by a real headless Chromium (Debian package `chromium`: `make browser`)."""

import base64
import html
import html.parser
import json
import os
import pickle
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pyarrow as pa
import pytest

from pipeline import predict
from pipeline.blocks import ScoredBlock
from pipeline.reporting.page import BAR_COLOR, THROUGHPUT_COLOR, render_report
from pipeline.reporting.summaries import (
    CATEGORY_CAP,
    HISTOGRAM_CAP,
    THROUGHPUT_CAP,
    OutputSummariesFn,
    ThroughputFn,
)
from pipeline.run_contract import ErrorRateExceeded
from pipeline.sampledata.generate import generate_file
from tests.test_bigquery import bigquery  # noqa: F401 - the BigQuery fixture, for the sink's report
from transforms.model_contract import ModelDescription

RECORDS = 150
# A file name a browser would take for markup if the report did not escape it.
INPUT_NAME = 'ads <i>&amp; "q".jsonl'


@pytest.fixture(scope="module")
def run(trained_ads, tmp_path_factory):
    """One predict run over good records and one bad record of each kind."""
    work = tmp_path_factory.mktemp("report")
    path = work / INPUT_NAME
    generate_file(str(path), RECORDS, seed=5, first_id=50_000)
    good = json.loads(path.read_text().splitlines()[0])
    bad = [
        '{"id": "broken", "age": 3',
        json.dumps({**good, "id": "age-old", "age": "old"}),
        json.dumps({**good, "id": "age-130", "age": 130}),
        json.dumps({k: v for k, v in {**good, "id": "no-gender"}.items() if k != "gender"}),
    ]
    with open(path, "a") as f:
        f.writelines(line + "\n" for line in bad)
    out = work / "out"
    argv = ["--model_dir", trained_ads["model"], "--input", str(path), "--output_dir", str(out)]
    manifest = predict.run([*argv, "--max_error_rate", "1"])
    return {
        "out": out,
        "argv": argv,
        "manifest": manifest,
        "page": (out / "report.html").read_text(),
        "outputs": [o.name for o in ModelDescription.read(trained_ads["model"]).outputs],
    }


class Elements(html.parser.HTMLParser):
    """Every element's attributes and text, to read the numbers the report puts in the DOM."""

    def __init__(self, page: str):
        super().__init__()
        self.found: list[dict] = []
        self._open: list[dict] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, **{name: value or "" for name, value in attrs}, "text": ""}
        self.found.append(element)
        if tag not in ("img", "meta", "br", "link", "input"):
            self._open.append(element)

    def handle_endtag(self, tag):
        while self._open:
            if self._open.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        for element in self._open:
            element["text"] += data

    def having(self, attribute: str, value: str | None = None) -> list[dict]:
        return [e for e in self.found if attribute in e and (value is None or e[attribute] == value)]


def test_report_counts_errors_and_histograms_match_the_run(run):
    page, manifest, out = run["page"], run["manifest"], run["out"]
    assert manifest["report"] == "report.html" and json.loads((out / "run.json").read_text()) == manifest
    assert os.path.getmtime(out / "report.html") <= os.path.getmtime(out / "run.json")
    counts = manifest["counts"]
    assert (counts["read"], counts["predictions"], counts["errors"]) == (RECORDS + 4, RECORDS, 4)

    # Self-contained: nothing to fetch, no script.
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(script|link|iframe|object|embed)\b|@import|url\(", page, re.I)
    for reference in re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page):
        assert reference.startswith(("data:", "#")), reference
    assert "default-src 'none'" in page  # and the browser is told so

    dom = Elements(page)
    for name in ("read", "predictions", "errors"):
        (element,) = dom.having("data-count", name)
        assert int(element["data-value"]) == counts[name]
        assert element["text"].strip() == f"{counts[name]:,}"
    (status,) = dom.having("data-status")
    assert status["data-status"] == manifest["status"] == "succeeded"

    stats = json.loads((out / "prediction.errors_stats").read_text())
    assert len(stats["by_kind"]) == 4
    rows = dom.having("data-error-code")
    assert len(rows) == len(stats["by_kind"])
    for kind in stats["by_kind"]:
        (row,) = [
            r
            for r in rows
            if (r["data-error-code"], r["data-error-field"]) == (kind["code"], kind["field"] or "")
        ]
        assert f"{kind['count']:,}" in row["text"] and kind["code"] in row["text"]

    figures = dom.having("data-output")
    assert [f["data-output"] for f in figures] == run["outputs"]
    images = [
        e
        for e in dom.found
        if e["tag"] == "img"
        and e["src"].startswith("data:image/svg+xml;base64,")
        and e.get("class") != "qplot"
    ]
    assert len(images) == len(run["outputs"]) + 1  # one histogram per output, and throughput
    # The data-quality gate's section, before the counts (its plots: tests/test_quality_report.py).
    (quality,) = dom.having("data-verdict")
    assert quality["data-verdict"] == manifest["quality"]["verdict"]
    assert int(quality["data-checks"]) == len(manifest["quality"]["checks"])
    assert page.index('id="quality"') < page.index('id="counts"')
    for figure in figures:
        assert int(figure["data-records"]) == int(figure["data-values"]) == counts["predictions"]
        assert int(figure["data-binned"]) + int(figure["data-nonfinite"]) == counts["predictions"]
    bins = dom.having("data-low")
    assert sum(int(b["data-count"]) for b in bins) == counts["predictions"]
    assert all(float(b["data-low"]) < float(b["data-high"]) for b in bins)
    svg = ET.fromstring(base64.b64decode(images[0]["src"].split(",", 1)[1]))
    assert svg.tag.endswith("svg") and len(svg.findall(".//{*}rect")) == len(bins) + 1  # + background
    assert [t.text for t in svg.findall(".//{*}text")].count("records") == 1  # the y-axis label
    (throughput,) = [e for e in dom.found if e["tag"] == "figure" and "throughput" in e.get("class", "")]
    assert int(throughput["data-records"]) == counts["predictions"]

    # Strings from the run are escaped: the file name shows as text, not markup.
    assert "<i>" not in page and html.escape(INPUT_NAME) in page
    assert manifest["model"]["fingerprint"] in page and manifest["versions"]["apache-beam"] in page


def test_a_failed_run_has_a_report_too(run, tmp_path):
    out = tmp_path / "failed"
    argv = [*run["argv"][:-1], str(out), "--max_error_rate", "0.01"]
    with pytest.raises(ErrorRateExceeded):
        predict.run(argv)
    assert not (out / "_SUCCESS").exists()
    manifest = json.loads((out / "run.json").read_text())
    dom = Elements((out / "report.html").read_text())
    (status,) = dom.having("data-status")
    assert manifest["report"] == "report.html" and status["data-status"] == manifest["status"] != "succeeded"
    assert len(dom.having("data-error-code")) == 4


def test_a_bigquery_sink_run_writes_a_report(bigquery, trained_ads, tmp_path):  # noqa: F811
    project = bigquery["project"]
    manifest = predict.run(["--model_dir", trained_ads["model"], "--input", f"bq://{project}.ads.impressions",
                            "--output_dir", str(tmp_path), "--output_format", "bigquery", "--output_table",
                            f"bq://{project}.ads.report_predictions", "--max_error_rate", "1",
                            *bigquery["flags"]])  # fmt: skip
    assert manifest["report"] == "report.html" and os.path.exists(tmp_path / "_SUCCESS")
    dom = Elements((tmp_path / "report.html").read_text())
    (read,) = dom.having("data-count", "read")
    assert int(read["data-value"]) == manifest["counts"]["read"] == 52
    assert sum(int(b["data-count"]) for b in dom.having("data-low")) == manifest["counts"]["predictions"]


# --- In a real browser ----------------------------------------------------------------------------


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("chromium is not installed: run `make browser` (Debian package chromium)")
    return found


def headless(*flags, url: str, profile) -> subprocess.CompletedProcess:
    command = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", "--window-size=1200,2000", *flags, url]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def test_the_report_renders_in_headless_chromium(run, tmp_path):
    from PIL import Image

    url = (run["out"] / "report.html").as_uri()
    screenshot = tmp_path / "report.png"
    headless(f"--screenshot={screenshot}", url=url, profile=tmp_path / "profile")
    image = Image.open(screenshot).convert("RGB")
    assert image.size == (1200, 2000)
    pixels = np.asarray(image).reshape(-1, 3).astype(int)
    assert len(np.unique(pixels, axis=0)) > 100, "the page looks blank"
    assert (pixels.min(axis=1) < 240).mean() > 0.03, "almost nothing drawn"

    def near(color: str) -> int:
        rgb = np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(pixels - rgb).max(axis=1) <= 6).sum())

    # The plots are drawn: the SVG images' bars are on the screen.
    assert near(BAR_COLOR) > 2000, "no histogram bars on the screenshot"
    assert near(THROUGHPUT_COLOR) > 200, "no throughput bars on the screenshot"

    dom = Elements(headless("--dump-dom", url=url, profile=tmp_path / "profile").stdout)
    counts = run["manifest"]["counts"]
    for name in ("read", "predictions"):
        (element,) = dom.having("data-count", name)
        assert element["text"].strip() == f"{counts[name]:,}"
    assert len(dom.having("data-output")) == len(run["outputs"])


# --- The summaries: mergeable and bounded -----------------------------------------------------


def blocks(seed=0, count=40):
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(count):
        rows = int(rng.integers(1, 300))
        values = rng.lognormal(0, 2, rows) * rng.choice([-1, 1], rows)
        values[rng.random(rows) < 0.01] = np.nan
        values[rng.random(rows) < 0.01] = -np.inf
        found.append(
            ScoredBlock(
                pa.array([str(i) for i in range(rows)]),
                {
                    "probability": values.astype(np.float32),
                    "scores": np.stack([values, -values], axis=1),
                    "classes": np.array([b"yes", b"no"])[rng.integers(0, 2, (rows, 2))],
                },
            )
        )
    return found


def combine(fn, elements, groups: int):
    """Elements added to `groups` accumulators, merged in two uneven rounds."""
    accumulators = []
    for part in np.array_split(np.arange(len(elements)), groups):
        accumulator = fn.create_accumulator()
        for i in part:
            accumulator = fn.add_input(accumulator, elements[i])
        accumulators.append(accumulator)
    half = max(1, len(accumulators) // 3)
    merged = [fn.merge_accumulators(accumulators[:half]), fn.merge_accumulators(accumulators[half:])]
    return fn.extract_output(fn.merge_accumulators(merged[::-1]))


def test_output_summaries_merge_like_one_accumulator():
    fn = OutputSummariesFn(["probability", "scores", "classes", "absent"])
    scored = blocks()
    single = combine(fn, scored, 1)
    rows = sum(len(b) for b in scored)
    by_name = {s["name"]: s for s in single}
    assert [s["name"] for s in single] == ["probability", "scores", "classes", "absent"]
    assert by_name["probability"]["records"] == by_name["probability"]["values"] == rows
    assert by_name["scores"]["values"] == 2 * rows and by_name["scores"]["shape"] == [2]
    for name in ("probability", "scores"):
        summary = by_name[name]
        binned = sum(count for _, _, count in summary["bins"])
        assert (
            binned == summary["finite"] and binned + sum(summary["nonfinite"].values()) == summary["values"]
        )
        assert summary["nonfinite"]["nan"] > 0 and summary["nonfinite"]["-inf"] > 0
    assert sum(c for _, c in by_name["classes"]["categories"]) == 2 * rows
    assert by_name["absent"]["values"] == 0 and by_name["absent"]["bins"] == []
    for groups in (2, 7, len(scored)):
        merged = combine(fn, scored, groups)
        for a, b in zip(combine(fn, scored, 1), merged, strict=True):
            assert (a.pop("mean", None) or 0) == pytest.approx(b.pop("mean", None) or 0, rel=1e-9)
            assert a == b


def test_summaries_stay_bounded_after_a_million_values():
    rng = np.random.default_rng(1)
    fn = OutputSummariesFn(["probability", "classes"])
    accumulator = fn.create_accumulator()
    for i in range(100):  # 1M values, a few far out (a histogram must not grow with them)
        values = rng.random(10_000)
        values[:3] = rng.normal(0, 10.0 ** (i % 30), 3)
        text = np.array([f"class-{j}" for j in rng.integers(0, 10 * CATEGORY_CAP, 50)])
        accumulator = fn.add_input(
            accumulator, ScoredBlock(pa.array(np.zeros(10_000)), {"probability": values, "classes": text})
        )
        assert len(accumulator["probability"].grid.counts) <= HISTOGRAM_CAP
    assert len(pickle.dumps(accumulator)) < 64 * 1024
    probability, classes = fn.extract_output(accumulator)
    assert probability["values"] == sum(c for _, _, c in probability["bins"]) == 1_000_000
    assert classes["too_many_values"] and classes["values"] == 5000

    throughput = ThroughputFn()
    stamps = [(1.7e9 + t, 3) for t in np.sort(rng.random(1_000_000) * 86_400)]  # a day of blocks
    accumulators = [throughput.add_inputs(throughput.create_accumulator(), stamps[i::4]) for i in range(4)]
    for accumulator in accumulators:
        assert len(accumulator.counts) <= THROUGHPUT_CAP
    merged = throughput.extract_output(throughput.merge_accumulators(accumulators))
    single = throughput.extract_output(throughput.add_inputs(throughput.create_accumulator(), stamps))
    assert merged == single and merged["records"] == 3_000_000
    assert len(merged["buckets"]) <= THROUGHPUT_CAP and sum(c for _, _, c in merged["buckets"]) == 3_000_000
    assert all(hi - lo == 512 for lo, hi, _ in merged["buckets"])  # one-second buckets, doubled


def test_render_escapes_what_comes_from_the_run():
    manifest = {"status": "succeeded", "counts": {"read": 1, "predictions": 1, "errors": 0},
                "model": {"dir": "gs://b/<script>alert(1)</script>"}, "run_id": '"><b>'}  # fmt: skip
    outputs = [{"name": "<u>", "kind": "number", "records": 1, "values": 1, "shape": [],
                "nonfinite": {"nan": 0}, "finite": 1, "min": 0.5, "max": 0.5, "mean": 0.5,
                "bins": [[0.5, 0.5000001, 1]]}]  # fmt: skip
    page = render_report(manifest, {"errors": 0, "by_kind": []}, outputs, {"records": 0, "buckets": []})
    assert "<script>" not in page and '"><b>' not in page and "<u>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
