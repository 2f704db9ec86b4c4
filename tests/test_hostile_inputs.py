"""Hostile inputs at the reader and validator: each costs one error record, never the run.

Every case here broke the promise once (issue 9): a segfault, a RecursionError, raw bytes
in an output, a record blamed on the wrong field, gigabytes for one line. The native parser
cases run in a child process, so a regression fails its test instead of killing the suite.
"""

import base64
import dataclasses
import io
import json
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pyarrow as pa
import pytest

from pipeline import errors
from pipeline.blocks import RecordLayout
from pipeline.inference.batching import (
    MAX_PADDED_LIST_CELLS,
    byte_bounded,
    narrow_batches,
    row_bytes,
    total_bytes,
)
from pipeline.io import blocks_and_errors, read_stream
from pipeline.io.jsonl import JsonParser
from pipeline.validation import MAX_IMAGE_PIXELS, MAX_LIST_ITEMS, declared_sizes, image_size, validate_block
from transforms.model_contract import description_from_schema
from transforms.schema import load_schema

PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"


@pytest.fixture(scope="module")
def layout():
    description = description_from_schema(load_schema("ads"))
    return RecordLayout(description.inputs, description.key_field, require_key=True)


def good(key="a", **changes):
    record = {"id": key, "age": 30, "gender": "male", "media": "X", "interests": ["sports"], "bid": 1.5,
              "hour": 3, "image": PNG_1X1}  # fmt: skip
    record.update(changes)
    return json.dumps(record)


def read(data: bytes, layout, source="in.jsonl", block_bytes=1 << 20):
    """(valid rows, error records) as predict reads and validates them."""
    blocks, failures = blocks_and_errors(
        read_stream(io.BytesIO(data), source, layout, block_bytes=block_bytes)
    )
    rows = []
    for block in blocks:
        valid, invalid = validate_block(block, layout)
        failures += invalid
        rows += valid.batch.to_pylist() if valid is not None else []
    for failure in failures:  # every error record is strict JSON in valid UTF-8
        json.dumps(failure, allow_nan=False).encode("utf-8")
    return rows, failures


def summary(failures):
    return [(f["source"], f["error"]["code"], f["error"]["field"]) for f in failures]


def read_in_child(data: bytes, tmp_path) -> dict:
    """Reads `data` in a child process: a crash in native code is a failed test, not a dead suite."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    script = textwrap.dedent(f"""
        import json
        from pipeline.blocks import RecordLayout
        from pipeline.io import blocks_and_errors, read_stream
        from transforms.model_contract import description_from_schema
        from transforms.schema import load_schema
        d = description_from_schema(load_schema("ads"))
        layout = RecordLayout(d.inputs, d.key_field, require_key=True)
        with open({str(path)!r}, "rb") as f:
            blocks, failures = blocks_and_errors(read_stream(f, "in.jsonl", layout))
        print(json.dumps({{"rows": sum(len(b) for b in blocks), "messages": [e["error"]["message"] for e in failures]}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"reader died with exit {done.returncode}: {done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_block_of_null_lines_is_one_error_each_not_a_segfault(tmp_path):
    # pyarrow's JSON reader segfaults on a block that starts with `null` (exit 139).
    got = read_in_child(b"null\n" * 1000 + (good() + "\n").encode() + b"  null\n", tmp_path)
    assert got["rows"] == 1
    assert got["messages"] == ["expected a JSON object per line, got null"] * 1001


@pytest.mark.parametrize("line", ["[" * 100_000, '{"a":' * 100_000, "{" + '"x": [' * 50_000])
def test_deep_nesting_is_one_error_not_a_recursion_error(tmp_path, line):
    got = read_in_child(f"{good('a')}\n{line}\n{good('b')}\n".encode(), tmp_path)
    assert got["rows"] == 2 and len(got["messages"]) == 1
    assert "JSON" in got["messages"][0]


def test_every_kind_of_non_object_line_is_named(layout):
    lines = ["null", "[1, 2]", '"text"', "17", "true", "x", f"\ufeff{good('bom-inside')}"]
    rows, failures = read(("\n".join([good("a"), *lines, good("b")]) + "\n").encode(), layout)
    assert [r["id"] for r in rows] == ["a", "b"]
    assert [f["error"]["message"].split(":")[0] for f in failures] == [
        "expected a JSON object per line, got null",
        "expected a JSON object per line, got an array",
        "expected a JSON object per line, got a string",
        "expected a JSON object per line, got a number",
        "expected a JSON object per line, got true/false",
        "line is not valid JSON",
        "line is not valid JSON",
    ]
    assert [f["source"] for f in failures] == [f"in.jsonl:{n}" for n in range(2, 9)]


def test_non_utf8_bytes_are_blamed_on_their_field_and_never_reach_an_output(layout):
    bad_gender = good("g", age="old").encode().replace(b'"male"', b'"m\xe9le"')  # and a bad age
    bad_key = good("k1").encode().replace(b'"k1"', b'"k\xff1"')
    data = b"\n".join([good("a").encode(), bad_gender, bad_key, good("b").encode()]) + b"\n"
    rows, failures = read(data, layout)
    assert [r["id"] for r in rows] == ["a", "b"]
    assert summary(failures) == [
        ("in.jsonl:2", errors.MALFORMED_RECORD, "gender"),
        ("in.jsonl:3", errors.MALFORMED_RECORD, "id"),
    ]
    assert "not UTF-8 (b'\\xe9')" in failures[0]["error"]["message"]
    assert failures[0]["key"] == "g" and failures[1]["key"] == "k\ufffd1"
    assert failures[0]["instance"]["gender"] == "m\ufffdle"


def test_non_utf8_csv_cell_is_blamed_on_its_column(layout):
    header = b"id,age,gender,media,interests,bid,hour,image\n"
    data = header + b"a,30,male,X,,,3,%s\nb,31,f\xe9male,X,,,3,%s\n" % (PNG_1X1.encode(), PNG_1X1.encode())
    rows, failures = read(data, layout, "in.csv")
    assert [r["id"] for r in rows] == ["a"]
    assert (
        summary(failures) == [("in.csv:3", errors.MALFORMED_RECORD, "gender")] and failures[0]["key"] == "b"
    )


def test_an_integer_key_beyond_int64_names_the_field_and_the_fix(layout):
    int_keys = dataclasses.replace(layout, key_type="int")
    line = good().replace('"id": "a"', '"id": 99999999999999999999999')
    rows, failures = read(f"{line}\n".encode(), int_keys)
    assert rows == [] and summary(failures) == [("in.jsonl:1", errors.OUT_OF_RANGE, "id")]
    assert "beyond the 64-bit integer range" in failures[0]["error"]["message"]
    assert "key: {type: string}" in failures[0]["error"]["message"]
    assert failures[0]["key"] == "99999999999999999999999"


def test_a_number_for_a_text_key_says_how_to_fix_it(layout):
    rows, failures = read((good().replace('"id": "a"', '"id": 17') + "\n").encode(), layout)
    assert summary(failures) == [("in.jsonl:1", errors.WRONG_TYPE, "id")]
    assert "quote the key" in failures[0]["error"]["message"]


def test_a_csv_row_with_the_wrong_column_count_keeps_its_key(layout):
    data = (
        f"id,age,gender,media,interests,bid,hour,image\nshort,30,male\nlong,30,male,X,,,3,{PNG_1X1},extra\n"
    )
    rows, failures = read(data.encode(), layout, "in.csv")
    assert [(f["key"], f["error"]["message"]) for f in failures] == [
        ("short", "expected 8 columns as in the header of in.csv, got 3"),
        ("long", "expected 8 columns as in the header of in.csv, got 9"),
    ]


def test_a_line_longer_than_a_parse_chunk_is_read(layout):
    # A valid 2.4 MB image used to be "could not be read as the declared types".
    big_png = base64.b64decode(PNG_1X1) + b"\x00" * 1_800_000  # trailing bytes after IEND
    line = good("big", image=base64.b64encode(big_png).decode())
    rows, failures = read(f"{good('a')}\n{line}\n".encode(), layout, block_bytes=8 << 20)
    assert failures == [] and [r["id"] for r in rows] == ["a", "big"]


def test_blank_and_space_only_lines_are_not_records_but_two_objects_on_a_line_are_one_error(layout):
    data = f"{good('a')}\n\n   \n\t\r\n{good('b')}{good('c')}\n  {good('d')}\n".encode()
    rows, failures = read(data, layout)
    assert [(r["id"], r["__line__"]) for r in rows] == [("a", 1), ("d", 6)]
    assert summary(failures) == [("in.jsonl:5", errors.MALFORMED_RECORD, None)]


def test_a_byte_order_mark_starts_the_file_not_the_first_record(layout):
    rows, failures = read(b"\xef\xbb\xbf" + f"{good('a')}\n{good('b')}\n".encode(), layout)
    assert failures == [] and [r["id"] for r in rows] == ["a", "b"]


def test_a_million_bad_lines_never_reach_the_native_parser(layout, monkeypatch):
    """Lines that cannot be records are screened out in numpy: no parse (let alone a bisection
    of parses) per bad line, so a file of garbage costs one diagnosis per line."""
    calls = []
    original = JsonParser.parse
    monkeypatch.setattr(
        JsonParser, "parse", lambda self, data, chunk: calls.append(1) or original(self, data, chunk)
    )
    lines = 1_000_000
    rows, failures = read(b"x\n" * lines + f"{good('a')}\n".encode(), layout, block_bytes=8 << 20)
    assert len(failures) == lines and [r["id"] for r in rows] == ["a"]
    assert failures[-1]["source"] == f"in.jsonl:{lines}"
    assert len(calls) == 1


def test_a_list_past_the_limit_is_one_error(layout):
    long_list = good("long", interests=["sports"] * (MAX_LIST_ITEMS + 1))
    at_limit = good("ok", interests=["sports"] * MAX_LIST_ITEMS)
    rows, failures = read(f"{long_list}\n{at_limit}\n".encode(), layout)
    assert [r["id"] for r in rows] == ["ok"]
    assert summary(failures) == [("in.jsonl:1", errors.OUT_OF_RANGE, "interests")]
    assert f"{MAX_LIST_ITEMS + 1} items" in failures[0]["error"]["message"]


def test_a_long_list_only_narrows_the_batches_that_hold_it():
    import pyarrow as pa

    lengths = [1] * 100_000
    lengths[70_000] = MAX_LIST_ITEMS
    column = pa.array([["x"] * n for n in lengths], pa.list_(pa.string()))
    batch = pa.RecordBatch.from_arrays([column], ["interests"])
    slices = narrow_batches(batch, [(0, 50_000), (50_000, 50_000)], ["interests"])
    assert slices[0] == (0, 50_000)  # the batch without the long list is untouched
    assert sum(size for _, size in slices) == 100_000
    assert [start for start, _ in slices] == sorted(start for start, _ in slices)
    for start, size in slices:
        assert size * max(lengths[start : start + size]) <= MAX_PADDED_LIST_CELLS or size == 1


def test_large_creatives_cut_only_the_batches_that_hold_them():
    import pyarrow as pa

    sizes = [3_000] * 1_000
    sizes[10:20] = [2_000_000] * 10  # ten 2 MB banners among thumbnails
    sizes[500] = 9_000_000  # one over the cap on its own
    images = pa.array(["x" * n for n in sizes])
    lists = pa.array([["ab", None, "cde"]] * 1_000, pa.list_(pa.string()))
    batch = pa.RecordBatch.from_arrays([images, lists], ["image", "interests"])
    per_row = row_bytes(batch, ["image", "interests"])
    assert per_row.tolist() == [n + 5 for n in sizes]  # a null list item counts 0 bytes
    cap = 5_000_000
    slices = byte_bounded(batch, [(0, 400), (400, 300), (700, 300)], ["image", "interests"], cap)
    assert slices[-1] == (700, 300)  # a batch under the cap is left as it was
    assert [start for start, _ in slices] == [0, *np.cumsum([size for _, size in slices[:-1]]).tolist()]
    for start, size in slices:
        assert per_row[start : start + size].sum() <= cap or size == 1
    # Greedy: 10 thumbnails + 2 banners fill the first call; pairs of banners; a pair and as
    # many thumbnails as fit; the rest. The 9 MB record is a call of its own.
    assert slices == [(0, 12), (12, 2), (14, 2), (16, 2), (18, 334), (352, 48),
                      (400, 100), (500, 1), (501, 199), (700, 300)]  # fmt: skip
    assert byte_bounded(batch, [(0, 1_000)], ["image"], 0) == [(0, 1_000)]  # 0: no cap
    # A block whose values fit one call is measured off its offsets, not row by row: the
    # same bytes as the rows' sum, for slices (the calls of a block) and large strings too.
    big = pa.RecordBatch.from_arrays([images.cast(pa.large_string()), lists], ["image", "interests"])
    for start, size in [(0, 1_000), (5, 10), (21, 479), (999, 1), (1_000, 0)]:
        for sliced in (batch.slice(start, size), big.slice(start, size)):
            assert (
                total_bytes(sliced, ["image", "interests"]) == row_bytes(sliced, ["image", "interests"]).sum()
            )
    assert byte_bounded(batch, [(20, 480)], ["image", "interests"], cap) == [(20, 480)]  # all fit


def test_a_byte_cap_changes_the_calls_not_the_predictions(trained_ads, tmp_path):
    from pipeline import predict

    records = []
    for index in range(40):
        side = 600 if index % 8 == 0 else 40  # mixed creatives: a few large, most small
        records.append(good(f"r{index}", image=jpeg(side, side, quality=95, noise=True)))
    (tmp_path / "in.jsonl").write_text("\n".join(records) + "\n")
    image_bytes = [len(json.loads(r)["image"]) for r in records]

    def scored(cap):
        out = tmp_path / f"out-{cap}"
        manifest = predict.run(
            ["--model_dir", trained_ads["model"], "--input", str(tmp_path / "in.jsonl"),
             "--output_dir", str(out), "--max_batch_bytes", str(cap), "--no_progress"]
        )  # fmt: skip
        lines = (out / "prediction.results-00000-of-00001").read_text().splitlines()
        return manifest, {p["key"]: p["prediction"]["probability"] for p in map(json.loads, lines)}

    uncapped, expected = scored(0)
    cap = max(image_bytes) + 1_000
    capped, found = scored(cap)
    assert uncapped["counts"]["model_batches"] == 1 and uncapped["max_batch_bytes"] == 0
    assert capped["counts"]["model_batches"] >= sum(image_bytes) // cap + 1
    assert capped["counts"]["predictions"] == 40 and capped["counts"]["errors"] == 0
    assert found.keys() == expected.keys()
    assert max(abs(found[k] - expected[k]) for k in found) < 1e-6


def png(width, height) -> str:
    """A PNG that declares width x height pixels: a few KB that decode to gigabytes."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * (width * 3 + 1) * 64, 9)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    return base64.b64encode(data).decode()


def jpeg(width, height, exif_bytes=0, quality=5, noise=False) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    exif = b"Exif\x00\x00" + b"x" * exif_bytes if exif_bytes else b""
    pixels = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels) if noise else Image.new("RGB", (width, height))
    image.save(buffer, "JPEG", quality=quality, exif=exif)
    return base64.b64encode(buffer.getvalue()).decode()


def test_image_sizes_come_from_headers():
    assert image_size(PNG_1X1) == (1, 1)
    assert image_size(png(20_000, 20_000)) == (20_000, 20_000)
    assert image_size(jpeg(64, 48)) == (64, 48)
    assert image_size(jpeg(40, 30, exif_bytes=30_000)) == (40, 30)  # frame header 30 KB in
    assert image_size("/9j/" + "A" * 100) is None  # not a readable header: the model decides


def test_declared_sizes_read_in_numpy_match_image_size_row_by_row():
    """The vectorized header reader gives what `image_size` gives each value, on whole and
    cut images, long EXIF blocks, fill bytes, padding, blanks, nulls and non-images."""
    rng = np.random.default_rng(7)
    whole = [PNG_1X1, png(20_000, 20_000), png(3, 70_000), jpeg(64, 48), jpeg(17, 9, noise=True),
             jpeg(40, 30, exif_bytes=30_000), jpeg(5000, 4000), jpeg(1, 1, exif_bytes=70)]  # fmt: skip
    raw = base64.b64decode(jpeg(33, 21))
    filled = raw[:2] + b"\xff" * 5 + raw[2:]  # fill bytes before a marker
    many_segments = raw[:2] + b"".join(b"\xff\xfe\x00\x04ab" for _ in range(80)) + raw[2:]  # 80 comments
    whole += [base64.b64encode(filled).decode(), base64.b64encode(many_segments).decode()]
    values = list(whole)
    for image in whole:
        for cut in rng.integers(1, len(image), 12).tolist():
            values.append(image[:cut])  # cut anywhere: inside a quad, inside the header
            values.append(image[: cut - cut % 4])
        values += [image + "\n", image.rstrip("=") or image, image + "  \t"]
    values += ["/9j/" + "A" * 100, "iVBORw0KGgo", "", "/9j/", "not base64 at all", None, "=" * 8]
    column = pa.array(values, pa.string())
    # Some rows skipped (as rows that failed an earlier check are), none of the whole images.
    rows = np.array([i for i in range(len(values)) if i < len(whole) or i % 5 != 3])
    widths, heights = declared_sizes(column, rows)
    for index, value in enumerate(values):
        expected = (image_size(value) or (0, 0)) if value and index in set(rows.tolist()) else (0, 0)
        assert (widths[index], heights[index]) == expected, (index, value[:40] if value else value)
    assert (widths[: len(whole)] > 0).all()  # every whole image read


def test_the_image_pattern_check_matches_the_regex_with_or_without_it(monkeypatch):
    """Padded base64 images take the fast path (no regex); anything else is left to the regex."""
    import pyarrow.compute as pc

    from pipeline import validation

    images = [PNG_1X1, jpeg(8, 8), png(5, 5), jpeg(9, 3, noise=True)]
    images += [image.rstrip("=") for image in images] + ["/9j/", "iVBORw0KGgo", "", None, "AAAA", "/9jX"]
    odd = ["/9j/AB=C", "/9j/ABC===", "/9j/AB C", "/9j/ABCD\n", "/9j/A\u00e9BC", "iVBORw0KGgo=A=", "=", "=="]
    regex = pc.match_substring_regex
    expected = {
        tuple(v): regex(pa.array(v, pa.string()), validation._IMAGE_PATTERN) for v in (images, images + odd)
    }

    def no_regex(*args, **kwargs):
        raise AssertionError("the fast path should have decided")

    monkeypatch.setattr(pc, "match_substring_regex", no_regex)
    assert validation._matches_image_pattern(pa.array(images, pa.string())).equals(expected[tuple(images)])
    monkeypatch.setattr(pc, "match_substring_regex", regex)
    for row in odd:  # each one sends its whole block to the regex, with the same answers
        values = images + [row]
        assert validation._matches_image_pattern(pa.array(values, pa.string())).equals(
            regex(pa.array(values, pa.string()), validation._IMAGE_PATTERN)
        ), row
    mixed = pa.array(images + odd, pa.string())
    assert validation._matches_image_pattern(mixed.slice(3, 9)).equals(
        expected[tuple(images + odd)].slice(3, 9)
    )


def test_a_decompression_bomb_is_one_error_before_the_model_sees_it(layout):
    bomb = png(20_000, 20_000)
    assert len(bomb) < 60_000
    rows, failures = read(f"{good('bomb', image=bomb)}\n{good('ok', image=jpeg(64, 48))}\n".encode(), layout)
    assert [r["id"] for r in rows] == ["ok"]
    assert summary(failures) == [("in.jsonl:1", errors.INVALID_IMAGE, "image")]
    assert "20000 x 20000 pixels" in failures[0]["error"]["message"]
    assert 20_000 * 20_000 > MAX_IMAGE_PIXELS
