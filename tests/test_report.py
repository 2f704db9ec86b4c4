"""report.html: written by the pipeline's last step, self-contained, true to run.json, and
rendered by a real headless Chromium (Debian package `chromium`: `make browser`) at a phone's
width and a desktop's."""

import base64
import html
import html.parser
import json
import os
import pickle
import re
import shutil
import subprocess
import urllib.parse
import xml.etree.ElementTree as ET
from datetime import datetime

import numpy as np
import pyarrow as pa
import pytest

from pipeline import predict
from pipeline.blocks import ScoredBlock
from pipeline.reporting import cost
from pipeline.reporting.markup import BAR_COLOR, THROUGHPUT_COLOR
from pipeline.reporting.page import render_report
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
LOCAL_PRICE = 3.6  # USD an hour for "local" in the run's price table: a cent per 10 s
PHONE, DESKTOP = 390, 1280  # viewport widths, CSS pixels


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
    prices = work / "prices.yaml"  # a price for this machine, so that the cost is not 0
    prices.write_text(f"examples: false\nmachines:\n  local: {{usd_per_hour: {LOCAL_PRICE}, vcpus: null}}\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cost, "PRICE_TABLE", str(prices))
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

    # Self-contained: nothing to fetch, no script; its links are to the files beside it.
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(script|link|iframe|object|embed)\b|@import|url\(", page, re.I)
    beside = set()
    for reference in re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page):
        if reference.startswith("./"):
            beside.add(urllib.parse.unquote(reference[2:]))
        else:
            assert reference.startswith(("data:", "#")), reference
    results = {p.name for p in out.iterdir() if p.name.startswith(("prediction.results-", "errors-"))}
    assert len(results) >= 2 and beside == results | {"prediction.errors_stats", "run.json"}
    assert all((out / name).is_file() for name in beside)
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
    assert "pipeline wall time" in page and ">wall time<" not in page

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


def test_the_report_names_the_job_and_date_and_shows_inputs_training_and_cost(run, trained_ads):
    page, manifest, out = run["page"], run["manifest"], run["out"]
    dom = Elements(page)
    started = manifest["timings"]["started"]
    local_day = datetime.fromisoformat(started).astimezone().date().isoformat()
    (title,) = dom.having("data-title")
    assert title["text"] == f"adpredict predict · {local_day}" and manifest["job_name"] is None
    assert f'<time datetime="{started}">' in page  # the exact time kept, shown as local ISO

    # Counts per input: read by the reading step, errors from the error records.
    (source,) = manifest["inputs"]["files"]
    counts = manifest["counts"]
    assert manifest["counts_by_input"] == [
        {"input": source, "read": counts["read"], "predictions": counts["predictions"], "errors": 4}
    ]
    (row,) = dom.having("data-input")
    assert (
        row["data-input"] == source and row["data-errors"] == "4" and row["data-read"] == str(counts["read"])
    )

    # The model's training figures beside this run's mean prediction.
    training = manifest["model"]["training"]
    profile = json.loads(
        open(os.path.join(trained_ads["model"], "assets.extra", "training_profile.json")).read()
    )
    assert training["eval_auc"] == trained_ads["metrics"]["eval_auc"]
    assert training["mean_prediction"] == {"probability": profile["outputs"]["probability"]["mean"]}
    scored = [
        json.loads(line) for p in out.glob("prediction.results-*") for line in p.read_text().splitlines()
    ]
    mean = np.mean([r["prediction"]["probability"] for r in scored])
    assert len(scored) == RECORDS and manifest["mean_prediction"]["probability"] == pytest.approx(
        mean, abs=2e-6
    )
    (auc,) = dom.having("data-figure", "training_auc")
    assert auc["text"] == f"{training['eval_auc']:.4f}"
    (tonight,) = dom.having("data-figure", "mean_prediction")
    assert float(tonight["text"]) == pytest.approx(mean, rel=1e-5)

    # What it cost, on this machine at the test's price table's price.
    spent, seconds = manifest["cost"], manifest["timings"]["seconds"]
    assert (spent["machine_type"], spent["workers"], spent["prices_are_examples"]) == ("local", 1, False)
    assert spent["vcpus_per_worker"] == cost.this_machine_cpus() and spent["worker_seconds"] == seconds
    assert spent["records_per_second"] == round(manifest["counts"]["read"] / seconds, 1)
    assert spent["records_per_second_per_vcpu"] == pytest.approx(
        spent["records_per_second"] / cost.this_machine_cpus(), rel=1e-3
    )
    assert spent["usd"] == pytest.approx(seconds / 3600 * LOCAL_PRICE, rel=1e-3)
    assert spent["usd_per_million_predictions"] == pytest.approx(spent["usd"] / RECORDS * 1e6, rel=1e-3)
    assert html.escape(spent["price_table"]) in page and "An estimate, assuming" in page


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


# A page that loads the report in two frames, a phone's width and a desktop's, and writes into
# its own DOM (for --dump-dom) what each shows: the figures' text, the page's width against the
# frame's, what sticks out, and any path that wraps inside a name instead of at a separator.
MEASURE = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="phone" src="URL" style="width:PHONEpx;height:900px;border:0"></iframe>
<iframe id="desktop" src="URL" style="width:DESKTOPpx;height:900px;border:0"></iframe>
<script>
function midword(d, path) {
  const walker = d.createTreeWalker(path, 4), range = d.createRange(), bad = [];
  let prev = null;
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (let i = 0; i < node.length; i++) {
      range.setStart(node, i); range.setEnd(node, i + 1);
      const rect = range.getBoundingClientRect();
      if (!rect.width && !rect.height) continue;
      if (prev && rect.top > prev.top + 1 && !"/_- ".includes(prev.ch)) bad.push(path.title + " @" + i);
      prev = {ch: node.data[i], top: rect.top};
    }
  }
  return bad;
}
function measure(frame) {
  const d = frame.contentDocument, root = d.documentElement, figures = {};
  for (const e of d.querySelectorAll(".tile [data-count], [data-figure]")) {
    const key = e.dataset.figure || e.dataset.count;
    (figures[key] = figures[key] || []).push(e.innerText.trim());
  }
  const wide = [...d.body.querySelectorAll("*")]
    .filter(e => e.getBoundingClientRect().right > root.clientWidth + 0.5)
    .slice(0, 8).map(e => e.tagName + "." + e.className + " in #" + (e.closest("section") || {}).id);
  const paths = [...d.querySelectorAll(".path")];
  return {scroll: root.scrollWidth, client: root.clientWidth, figures, wide, paths: paths.length,
          wrapped: paths.filter(p => new Set([...p.getClientRects()].map(r => Math.round(r.top))).size > 1).length,
          midword: paths.flatMap(p => midword(d, p))};
}
window.addEventListener("load", () => {
  const found = {};
  for (const frame of document.querySelectorAll("iframe")) found[frame.id] = measure(frame);
  const out = document.createElement("pre");
  out.id = "measured";
  out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
});
</script></body></html>"""


def measured(report, tmp_path) -> dict:
    """What the report at `report` shows at a phone's and a desktop's width (MEASURE)."""
    page = tmp_path / "measure.html"
    page.write_text(
        MEASURE.replace("URL", report.as_uri()).replace("PHONE", str(PHONE)).replace("DESKTOP", str(DESKTOP))
    )
    flags = ("--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom")
    dumped = headless(*flags, url=page.as_uri(), profile=tmp_path / "measure-profile").stdout
    found = re.search(r'<pre id="measured">(.*?)</pre>', dumped, re.S)
    assert found, "the measuring page never finished: " + dumped[-500:]
    return json.loads(html.unescape(found[1]))


def shown_number(text: str) -> tuple[float, int]:
    """ "$1,234.5" or "2,345" -> (1234.5, 1): the number shown and its decimals."""
    digits = text.strip().lstrip("$").replace(",", "")
    return float(digits), len(digits.partition(".")[2])


def assert_shows_run_json(found: dict, manifest: dict) -> None:
    """The figures the browser shows are run.json's, to the decimals shown, at both widths."""
    counts, spent = manifest["counts"], manifest["cost"]
    for width in ("phone", "desktop"):
        figures = found[width]["figures"]
        for name in ("read", "predictions", "errors"):
            assert figures[name] == [f"{counts[name]:,}"], (width, name)
        for name, value in (("records_per_second", spent["records_per_second"]),
                            ("records_per_second_per_vcpu", spent["records_per_second_per_vcpu"]),
                            ("worker_seconds", spent["worker_seconds"]),
                            ("usd_per_million_predictions", spent["usd_per_million_predictions"])):  # fmt: skip
            (text,) = figures[name]
            shown, decimals = shown_number(text)
            assert abs(shown - value) <= 0.5 * 10**-decimals + 1e-9, (width, name, text, value)
        assert figures["usd_per_million_predictions"][0].startswith("$")


def test_the_report_fits_a_phone_and_shows_what_run_json_says(run, tmp_path):
    found = measured(run["out"] / "report.html", tmp_path)
    manifest = run["manifest"]
    assert manifest["cost"]["usd_per_million_predictions"] > 0  # the test's price table prices "local"
    assert_shows_run_json(found, manifest)
    for width, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
        seen = found[width]
        assert seen["client"] == viewport
        assert seen["scroll"] <= viewport, (
            f"{width}: the page is {seen['scroll']} px wide; sticking out: {seen['wide']}"
        )
        assert seen["paths"] > 5 and seen["midword"] == [], (width, seen["midword"])
    assert found["phone"]["wrapped"] >= 3  # long paths wrap on the phone (at separators: above)


def worst_case(verdict: str) -> tuple:
    """render_report's inputs for a hand-made night with everything long: deep gs:// paths,
    60 inputs, 32 shards, long error messages, a Dataflow job's cost, and the data-quality
    section of a night the gate warned about or blocked (`verdict`)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from tests.test_quality_report import DUPLICATES, quality

    deep = "gs://ads-prod-scoring-europe-west4/nightly_scoring/partner-network_clicks/dt=2026-12-01/hour=23"
    files = [f"{deep}/part-{i:05d}-of-00060_clicks-and-impressions.jsonl.gz" for i in range(60)]
    read, errors, seconds = 6_000_000, 12_000, 1834.5
    options = PipelineOptions(
        ["--runner", "DataflowRunner", "--num_workers", "12", "--machine_type", "n2-standard-4"]
    )
    manifest = {
        "run_id": "9" * 32, "job_name": "adpredict-nightly-partner-network-clicks-20261201-231500",
        "date": "2026-12-01", "status": "succeeded" if verdict != "block" else "blocked by the data-quality gate",
        "output_dir": f"{deep}/predictions_v2-with-passthrough", "output_format": "jsonl", "runner": "DataflowRunner",
        "inputs": {"patterns": [f"{deep}/part-*-of-00060_clicks-and-impressions.jsonl.gz"], "files": files},
        "counts": {"read": read, "predictions": read - errors, "errors": errors, "error_rate": errors / read},
        "counts_by_input": [{"input": f, "read": read // 60, "predictions": (read - errors) // 60,
                             "errors": errors // 60} for f in files],
        "max_error_rate": 0.01, "files_published": 32, "input_fingerprint": "a" * 64,
        "timings": {"started": "2026-12-01T23:15:00.123456+00:00", "finished": "2026-12-01T23:45:34.623456+00:00",
                    "seconds": seconds},
        "model": {"dir": "gs://ads-prod-models/partner-network_clicks/2026-11-28_retrained-with-images/model",
                  "fingerprint": "f" * 64, "training": {"eval_auc": 0.8123, "eval_records": 998,
                  "train_records": 4002, "mean_prediction": {"probability": 0.3693}}},
        "mean_prediction": {"probability": 0.35},
        "workers": [{"cpu": {"name": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "kind": "avx512_bf16"},
                     "gpus": [], "precision": "bf16", "precision_reason": "auto: bf16 1.6x fp32 on this CPU kind",
                     "processes": 12}],
        "quality": quality(verdict, DUPLICATES),
        "cost": cost.estimate(cost.basis(options), seconds, read, read - errors, 2),
    }  # fmt: skip
    kinds = {"errors": errors, "by_kind": [
        {"code": "missing_field", "field": "age_of_the_user_in_years", "count": 9000,
         "example_message": f"required field age_of_the_user_in_years is missing in {files[3]}:1234567"},
        {"code": "malformed_record", "field": None, "count": 3000,
         "example_message": "not a JSON object: " + '{"id":"x","age":' * 12}]}  # fmt: skip
    outputs = combine(OutputSummariesFn(["probability", "scores", "classes"]), blocks(), 3)
    started = datetime.fromisoformat(manifest["timings"]["started"]).timestamp()
    stamps = [(started + 60 + t, 1000) for t in np.linspace(0, seconds - 90, 6000)]
    throughput = ThroughputFn(started)
    summary = throughput.extract_output(throughput.add_inputs(throughput.create_accumulator(), stamps))
    published = [f"prediction.results-{i:05d}-of-00030" for i in range(30)] + [
        "errors-00000-of-00002",
        "errors-00001-of-00002",
    ]
    return manifest, kinds, outputs, summary, published


@pytest.mark.parametrize("verdict", ["warn", "block"])
def test_a_report_with_everything_long_fits_a_phone_and_wraps_paths_at_separators(verdict, tmp_path):
    manifest, kinds, outputs, throughput, published = worst_case(verdict)
    report = tmp_path / "report.html"
    report.write_text(render_report(manifest, kinds, outputs, throughput, published=published))
    found = measured(report, tmp_path)
    assert_shows_run_json(found, manifest)
    for width, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
        seen = found[width]
        assert seen["scroll"] <= viewport, (
            f"{width}: the page is {seen['scroll']} px wide; sticking out: {seen['wide']}"
        )
        assert seen["midword"] == [], (width, seen["midword"][:5])
    assert found["phone"]["wrapped"] > 60  # the inputs' paths, at least
    dom = Elements(report.read_text())
    (title,) = dom.having("data-title")
    assert title["text"] == "adpredict-nightly-partner-network-clicks-20261201-231500 · 2026-12-01"
    links = [e for e in dom.found if e["tag"] == "a"]
    if verdict == "block":  # nothing published: only the staging folder, the error counts, run.json
        assert [a["href"] for a in links] == [
            "./.adpredict-staging/",
            "./prediction.errors_stats",
            "./run.json",
        ]
    else:  # 20 shards of predictions shown, the other 10 counted; both error shards
        assert len(links) == 20 + 2 + 2 and "… and 10 more prediction.results-* files" in report.read_text()
    assert sum(int(r["data-read"]) for r in dom.having("data-input")[:50]) == 50 * 100_000


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
        assert len(accumulator.grid.counts) <= THROUGHPUT_CAP
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
