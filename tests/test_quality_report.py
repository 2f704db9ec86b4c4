"""The data-quality gate as people see it: the "Data quality" section of report.html and the
summary's quality lines, from hand-made run.json dicts and from one real blocked night."""

import ast
import base64
import json
import random
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from pipeline import cli, reporting
from pipeline.quality import gate
from pipeline.reporting import quality_page, terminal
from pipeline.reporting.page import render_report
from pipeline.reporting.quality_page import SERIES_COLORS, TONIGHT
from pipeline.run_contract import (
    AGAINST_PREVIOUS,
    AGAINST_TRAINING,
    BLOCKED,
    CHECK_BLOCK,
    CHECK_OK,
    CHECK_WARN,
    EXIT_BLOCKED,
    QUALITY_ACCEPTED,
    QUALITY_BLOCKED,
    QUALITY_PASSED,
    QUALITY_WARNED,
    STAGING_DIR,
    SUCCEEDED,
)
from pipeline.sampledata.generate import generate_records
from tests.test_cli_output import summary_lines
from tests.test_report import Elements, headless
from transforms.schema import load_schema

# Feature names, category values and keys come from user data: each would be markup if the
# page did not escape it.
ODD_FEATURE = 'me<i>dia</i> & "co"'
ODD_VALUE = "<script>alert(1)</script>"
ODD_KEY = "<b>ad-7</b>"
OUTPUT_DIR = "/data/out/dt=2026-12-01"
THRESHOLDS = {"distance": "0.1:0.3", "missing": "0.1:0.3", "prediction": "0.5:1", "volume": "0.2:0.4",
              "feature.hour": "0.2:off"}  # fmt: skip


def check(subject, against, measure, value, level, warn=0.1, block=0.3, allowance=0.1, **more):
    return {"against": against, "subject": subject, "measure": measure, "value": value, "warn": warn,
            "block": block, "allowance": allowance, "records": 400, "reference_records": 5000,
            "level": level, **more}  # fmt: skip


def quality(verdict="block", duplicates=None):
    """run.json's `quality` of a night with a new dominant category (block), a shifted number
    (block, against both references), half the usual volume (block) and a shifted output (warn)."""
    odd = [check(ODD_FEATURE, "training", "L-infinity", 0.6917, "block"),
           check(ODD_FEATURE, "previous night", "L-infinity", 0.652, "block")]  # fmt: skip
    bid = [check("bid", "training", "Jensen-Shannon", 0.8123, "block", allowance=0.1644)]
    volume = [check("volume", "previous night", "records vs usual", 0.5, "block", warn=0.2, block=0.4,
                    allowance=0.0, reference_records=None, usual=800.0, nights=3)]  # fmt: skip
    output = [check("output probability", "training", "mean shift (std)", 0.7777, "warn", warn=0.5, block=1.0,
                    allowance=0.2794)]  # fmt: skip
    ok = [check("age", "training", "missing share", 0.0, "ok"), check("age", "previous night", "Jensen-Shannon",
          0.002, "ok"), check("hour", "training", "Jensen-Shannon", None, "ok", block=None)]  # fmt: skip
    categories = {"kind": "categories", "labels": [ODD_VALUE, "Instagram", "(other)"],
                  "series": {"tonight": [0.69, 0.05, 0.26], "training": [0.0, 0.2, 0.8],
                             "previous night": [0.0, 0.21, 0.79]}}  # fmt: skip
    histogram = {"kind": "histogram", "what": "values", "edges": ["0", "64", "128", "192"],
                 "series": {"training": [1.0, 0.0, 0.0], "tonight": [0.2, 0.004, 0.796]}}  # fmt: skip
    return {
        "verdict": verdict,
        "skew": {"checked": True, "reference": "training profile (5000 records)"},
        "drift": {"checked": True, "reference": "run of 2026-11-30 (/data/out/dt=2026-11-30/run.json)"},
        "thresholds": THRESHOLDS,
        "checks": ok + odd + bid + volume + output,
        "flagged": [
            {"subject": "bid", "level": "block", "checks": bid, "plot": histogram},
            {"subject": ODD_FEATURE, "level": "block", "checks": odd, "plot": categories},
            {"subject": "volume", "level": "block", "checks": volume, "plot": None},
            {"subject": "output probability", "level": "warn", "checks": output, "plot": None},
        ],
        "duplicate_keys": duplicates,
        "profile": {"records": 400, "features": {}},
        "volume_history": [800, 790, 810, 400],
    }


def passed(duplicates=None):
    checks = [check(f, "training", "missing share", 0.01, "ok") for f in ("age", "bid", "media")]
    return {
        "verdict": "pass",
        "skew": {"checked": True, "reference": "training profile (5000 records)"},
        "drift": {"checked": False, "why": "no previous night to compare with (adpredict nightly gives the last one)"},
        "thresholds": THRESHOLDS,
        "checks": checks,
        "flagged": [],
        "duplicate_keys": duplicates if duplicates is not None else {"extra_records": 0, "keys": 0, "examples": []},
    }  # fmt: skip


def manifest(quality_doc=None, status=SUCCEEDED):
    found = {"status": status, "output_dir": OUTPUT_DIR, "run_id": "r1", "output_format": "jsonl",
             "counts": {"read": 400, "predictions": 400, "errors": 0, "error_rate": 0.0},
             "max_error_rate": 0.01, "timings": {"seconds": 2.0}, "report": "report.html"}  # fmt: skip
    if quality_doc is not None:
        found["quality"] = quality_doc
    return found


def render(run: dict) -> str:
    return render_report(run, {"errors": 0, "by_kind": []}, [], {"records": 0, "buckets": []})


def quality_html(page_text: str) -> str:
    start = page_text.index('<section id="quality"')
    return page_text[start : page_text.index("</section>", start)]


def svgs(html_text: str) -> list:
    """The SVG documents of the data: URLs in `html_text`, parsed (a stray "<" fails here)."""
    return [
        ET.fromstring(base64.b64decode(encoded))
        for encoded in re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', html_text)
    ]


def texts(svg) -> list[str]:
    return [t.text for t in svg.iter() if t.tag.endswith("text") and t.text]


DUPLICATES = {"extra_records": 40, "keys": 38, "examples": [[ODD_KEY, 3], ["ad-9", 2]]}


# --- report.html --------------------------------------------------------------------------------


def test_a_blocked_night_says_nothing_was_published_where_it_is_held_and_how_to_publish():
    page_text = render(manifest(quality(duplicates=DUPLICATES), status=BLOCKED))
    section = quality_html(page_text)
    assert page_text.index('id="quality"') < page_text.index('id="counts"')  # near the top
    dom = Elements(section)
    (top,) = dom.having("data-verdict")
    assert top["data-verdict"] == "block" and int(top["data-checks"]) == 8
    (callout,) = [e for e in dom.found if e.get("class") == "callout block"]
    words = " ".join(callout["text"].split())
    assert "Blocked: nothing was published." in words
    assert f"held in {OUTPUT_DIR}/{STAGING_DIR}/" in words and "no _SUCCESS" in words
    assert "--accept_drift" in words
    assert "Skew checked against training: training profile (5000 records)" in section
    assert "Drift checked against the previous night: run of 2026-11-30" in section
    thresholds = " ".join(dom.having("class", "thresholds")[0]["text"].split())
    assert (
        "distance (L-infinity, Jensen-Shannon) 0.1:0.3" in thresholds
        and "hour's distance 0.2:off" in thresholds
    )

    flags = dom.having("data-subject")
    assert [(f["data-subject"], f["data-level"]) for f in flags] == [
        ("bid", "block"), (ODD_FEATURE, "block"), ("volume", "block"), ("output probability", "warn")
    ]  # fmt: skip
    by_subject = {f["data-subject"]: f for f in flags}
    assert "0.8123" in by_subject["bid"]["text"] and "+0.164" in by_subject["bid"]["text"]
    assert "400 / usual 800 (3 nights)" in by_subject["volume"]["text"]
    rows = [r for r in dom.having("data-check") if r["data-check"] == ODD_FEATURE]
    assert {(r["data-against"], r["data-value"], r["data-level"]) for r in rows} == {
        ("training", "0.6917", "block"), ("previous night", "0.652", "block")
    }  # fmt: skip
    assert len(rows) == 4  # in its block and in the table of all checks

    # One small plot per series, tonight beside each reference; the volume as two bars.
    series = [(f["data-series"]) for f in dom.having("data-series")]
    assert series == ["training", "tonight", "training", "tonight", "previous night", ""]
    plots = svgs(section)
    assert len(plots) == 6
    assert "0" in texts(plots[0]) and "192" in texts(plots[1])  # the bins' edges
    assert "<1%" in "".join(t.text or "" for t in plots[1].iter())  # the share 0.004, in a tooltip
    assert ODD_VALUE[:15] + "…" in texts(plots[2]) and "69%" in texts(plots[3])  # long labels cut
    assert f"{ODD_VALUE}: 0" in [t.text for t in plots[2].iter() if t.tag.endswith("title")]
    assert texts(plots[5])[:3] == ["records", "usual (3 nights)", "800"]
    all_checks = next(e for e in dom.found if e["tag"] == "details")
    assert "All 8 checks" in all_checks["text"] and "not measured" in all_checks["text"]

    duplicates = dom.having("data-duplicates")[0]
    assert duplicates["data-duplicates"] == "40"
    assert "40 records repeat a key" in " ".join(duplicates["text"].split())
    assert "upstream join went wrong" in duplicates["text"] and f"{ODD_KEY} ×3, ad-9 ×2" in duplicates["text"]
    assert [e["data-key"] for e in dom.having("data-key")] == [ODD_KEY, "ad-9"]


def test_strings_from_the_data_are_escaped_in_the_page_and_in_the_plots():
    page_text = render(manifest(quality(duplicates=DUPLICATES), status=BLOCKED))
    for raw in (ODD_FEATURE, ODD_VALUE, ODD_KEY, "<i>", "<b>ad"):
        assert raw not in page_text
    assert (
        "me&lt;i&gt;dia&lt;/i&gt; &amp; &quot;co&quot;" in page_text
        and "&lt;b&gt;ad-7&lt;/b&gt;" in page_text
    )
    for svg in svgs(quality_html(page_text)):  # every plot is well-formed XML, labels as text
        assert svg.tag.endswith("svg")


def test_a_passing_run_gets_one_line():
    page_text = render(manifest(passed()))
    section = quality_html(page_text)
    dom = Elements(section)
    (line,) = dom.having("class", "quality-line")
    assert " ".join(line["text"].split()) == (
        "passed: 3 checks against training, none at warn or block; drift not checked: no previous night to "
        "compare with (adpredict nightly gives the last one); no duplicate keys."
    )
    assert dom.having("data-subject") == [] and svgs(section) == [] and "callout" not in section
    assert dom.having("data-verdict")[0]["data-verdict"] == "pass"


def test_a_passing_run_with_duplicate_keys_shows_them():
    section = quality_html(render(manifest(passed(DUPLICATES))))
    dom = Elements(section)
    assert "no duplicate keys" not in dom.having("class", "quality-line")[0]["text"]
    assert (
        dom.having("data-duplicates")[0]["data-duplicates"] == "40" and "&lt;b&gt;ad-7&lt;/b&gt;" in section
    )


def test_warn_and_accepted_verdicts_say_the_run_was_published():
    warned = quality("warn")
    warned["flagged"] = warned["flagged"][-1:]
    words = " ".join(
        Elements(quality_html(render(manifest(warned)))).having("class", "callout warn")[0]["text"].split()
    )
    assert words == (
        "Published, with warnings. output probability shifted beyond its warn limits, none beyond a block limit."
    )
    accepted = Elements(quality_html(render(manifest(quality("accepted")))))
    (callout,) = accepted.having("class", "callout accepted")
    assert "Published despite a block." in callout["text"] and "--accept_drift" in callout["text"]
    assert accepted.having("data-verdict")[0]["data-verdict"] == "accepted"
    assert "nothing was published" not in callout["text"]


def test_no_gate_no_section_and_no_key_field_says_so():
    assert 'id="quality"' not in render(manifest())
    section = quality_html(render(manifest(quality("warn", duplicates=None))))
    assert "Duplicate keys: not counted (the records have no key field, or --duplicate_keys off)." in section


def test_reporting_takes_the_gates_words_from_the_run_contract_and_keeps_no_copy():
    """The gate's words live in `pipeline.run_contract` alone: no module of pipeline/reporting
    declares its own "pass", "block", "previous night"... (a copy would drift from the gate's)."""
    words = {QUALITY_PASSED, QUALITY_WARNED, QUALITY_BLOCKED, QUALITY_ACCEPTED, CHECK_OK, CHECK_WARN,
             CHECK_BLOCK, AGAINST_TRAINING, AGAINST_PREVIOUS}  # fmt: skip
    assert (gate.PASSED, gate.WARNED, gate.BLOCKED, gate.ACCEPTED, gate.OK, gate.WARN, gate.BLOCK) == (
        QUALITY_PASSED, QUALITY_WARNED, QUALITY_BLOCKED, QUALITY_ACCEPTED, CHECK_OK, CHECK_WARN, CHECK_BLOCK
    )  # fmt: skip
    copies = {}
    for path in sorted(Path(reporting.__file__).parent.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                # A mapping's values are what people read ("accepted" may be one); its keys count.
                said = [k for k in node.value.keys if k] if isinstance(node.value, ast.Dict) else [node.value]
                found = {n.value for v in said for n in ast.walk(v) if isinstance(n, ast.Constant)} & words
                if found:
                    copies[f"{path.name}:{node.lineno}"] = sorted(found)
    assert copies == {}
    assert terminal.QUALITY_BLOCKED is QUALITY_BLOCKED and quality_page.CHECK_BLOCK is CHECK_BLOCK


# --- The summary ------------------------------------------------------------------------------


def test_the_summary_of_a_blocked_night_names_each_flagged_subject_and_holds_back_the_outputs():
    text = terminal.predict_summary(manifest(quality(duplicates=DUPLICATES), status=BLOCKED), None, 3.0)
    lines = summary_lines(text)
    assert text.splitlines()[0] == "adpredict predict: failed: blocked by the data-quality gate (no _SUCCESS)"
    assert (
        lines["quality"]
        == "blocked, nothing published: 5 checks against training and 3 against the previous night"
    )
    flagged = [line.strip() for line in text.splitlines() if line.startswith(" " * 17) and line[17] != " "]
    assert flagged == [
        "bid: Jensen-Shannon 0.812 against training (block above 0.3 + 0.16 for sample size)",
        f"{ODD_FEATURE}: L-infinity 0.692 against training (block above 0.3 + 0.1 for sample size)",
        "volume: records vs usual 0.5 against previous night (block above 0.4: 400 records, usual 800)",
        "output probability: mean shift (std) 0.778 against training (warn above 0.5 + 0.28 for sample size)",
    ]  # fmt: skip
    assert text.index("quality") < text.index("  bid:") < text.index("duplicates") < text.index("predictions")
    assert (
        lines["duplicates"]
        == f"40 records repeat a key (38 keys, e.g. {ODD_KEY} x3): an upstream join went wrong?"
    )
    assert lines["predictions"] == f"held back in {OUTPUT_DIR}/{STAGING_DIR} (not published)"
    assert lines["error records"] == (
        f"{OUTPUT_DIR}/{STAGING_DIR}/errors-* (held back); by code and field: prediction.errors_stats"
    )
    assert "prediction.results" not in text


def test_the_summary_of_a_passing_or_accepted_night_and_one_without_the_gate():
    text = terminal.predict_summary(manifest(passed()), None)
    assert summary_lines(text)["quality"] == (
        "passed: 3 checks against training; drift not checked: no previous night to compare with"
    )
    assert "duplicates" not in summary_lines(text) and len(text.splitlines()) == 10
    accepted = summary_lines(terminal.predict_summary(manifest(quality("accepted")), None))
    assert accepted["quality"].startswith("blocked, published by --accept_drift: ")
    assert accepted["predictions"] == f"{OUTPUT_DIR}/prediction.results-* (jsonl)"
    no_gate = terminal.predict_summary(manifest(), None)
    assert "quality" not in summary_lines(no_gate) and len(no_gate.splitlines()) == 9
    many = quality()
    many["flagged"] = [{**many["flagged"][0], "subject": f"f{i}"} for i in range(13)]
    shown = terminal.predict_summary(manifest(many), None)
    assert (
        "f9: Jensen-Shannon" in shown and "f10:" not in shown and "+3 more flagged: see the report" in shown
    )


# --- A real blocked night ----------------------------------------------------------------------


def shifted_night(path, records=400) -> str:
    """Bids in cents (a unit change), a new network on most records, and 20 records twice."""
    rng = random.Random(3)
    lines = []
    for record in generate_records(load_schema("ads"), records, seed=77, first_id=90_000):
        if "bid" in record:
            record["bid"] *= 100
        if rng.random() < 0.7:
            record["media"] = "Snap<chat>"
        lines.append(json.dumps(record) + "\n")
    path.write_text("".join(lines + lines[:20]))
    return str(path)


@pytest.fixture(scope="module")
def blocked_night(trained_ads, tmp_path_factory):
    work = tmp_path_factory.mktemp("blocked")
    out = work / "out"
    argv = ["predict", "--model_dir", trained_ads["model"], "--input", shifted_night(work / "night.jsonl"),
            "--output_dir", str(out)]  # fmt: skip
    return {"argv": argv, "out": out, "code": cli.main(argv)}


def test_a_real_blocked_night_in_the_summary_and_the_report(blocked_night, capsys):
    out = blocked_night["out"]
    assert blocked_night["code"] == EXIT_BLOCKED
    run = json.loads((out / "run.json").read_text())
    found = run["quality"]
    assert run["status"] == BLOCKED and found["verdict"] == gate.BLOCKED
    flagged = {f["subject"]: f for f in found["flagged"]}
    assert {"bid", "media"} <= set(flagged) and flagged["bid"]["level"] == flagged["media"][
        "level"
    ] == "block"

    lines = summary_lines(terminal.predict_summary(run, None))
    assert lines["quality"].startswith("blocked, nothing published: ")
    assert lines["predictions"] == f"held back in {out}/{STAGING_DIR} (not published)"
    assert lines["duplicates"].startswith("20 records repeat a key (20 keys, e.g. ad-90000 x2)")
    text = terminal.predict_summary(run, None)
    for subject, entry in flagged.items():
        (line,) = [line for line in text.splitlines() if line.startswith(f"{' ' * 17}{subject}: ")]
        assert any(
            f" {c['value']:.3g} against {c['against']} ({c['level']} above" in line for c in entry["checks"]
        )

    page_text = (out / "report.html").read_text()
    dom = Elements(quality_html(page_text))
    assert [f["data-subject"] for f in dom.having("data-subject")] == [f["subject"] for f in found["flagged"]]
    for entry in found["flagged"]:
        for c in entry["checks"]:
            assert any(
                r["data-check"] == entry["subject"] and r["data-value"] == str(c["value"])
                for r in dom.having("data-check")
            )
    assert f"{out}/{STAGING_DIR}/" in page_text and not (out / "_SUCCESS").exists()
    plots = svgs(quality_html(page_text))
    assert len(plots) >= 4 and any("Snap<chat>" in texts(svg) for svg in plots)


def test_a_blocked_nights_plots_render_in_headless_chromium(blocked_night, tmp_path):
    from PIL import Image

    screenshot = tmp_path / "blocked.png"
    headless(f"--screenshot={screenshot}", url=(blocked_night["out"] / "report.html").as_uri(),
             profile=tmp_path / "profile")  # fmt: skip
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).reshape(-1, 3).astype(int)
    rgb = np.array([int(SERIES_COLORS[TONIGHT][i : i + 2], 16) for i in (1, 3, 5)])
    assert (np.abs(pixels - rgb).max(axis=1) <= 6).sum() > 500, "no bars of tonight on the screenshot"
