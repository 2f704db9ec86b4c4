"""Synthetic ad records with a planted signal, derived from a schema file.

Each feature's `sample` block in the schema says which values to draw and how much each
moves the log-odds of a click; the label is drawn from the resulting probability. Images
are small JPEG/PNG creatives: a coloured shape on a noisy background, where warm shapes
(red, orange) raise the click odds and cool ones (blue, cyan) lower them, so a model
must look at the pixels as well as the table to do well. Deterministic for a seed.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw

from transforms.schema import FLOAT, IMAGE, INT, STRING, STRING_LIST, Feature, Schema, load_schema

FORMATS = ("jsonl", "csv", "tfrecord", "parquet")


def generate_records(schema: Schema, num_records: int, seed: int = 0, first_id: int = 0) -> Iterator[dict]:
    """Yields `num_records` raw records (JSON-like dicts), keys from `ad-<first_id>` on.

    Missing optional values are left out of the record, as a real export would.
    """
    for record, _ in generate_records_with_logits(schema, num_records, seed, first_id):
        yield record


def generate_records_with_logits(
    schema: Schema, num_records: int, seed: int = 0, first_id: int = 0
) -> Iterator[tuple[dict, dict]]:
    """Yields (record, {"tabular": logit part, "image": logit part}) pairs.

    The logit parts let tests measure how much of the signal the image carries.
    """
    rng = np.random.default_rng(seed)
    bias = float(schema.label_sample.get("bias", 0.0))
    for i in range(num_records):
        record: dict = {}
        if schema.key_field:
            record[schema.key_field] = f"ad-{first_id + i}" if schema.key_type == "string" else first_id + i
        parts = {"tabular": bias, "image": 0.0}
        for feature in schema.features:
            value, effect = _draw(feature, rng)
            parts["image" if feature.type == IMAGE else "tabular"] += effect
            if value is not None:
                record[feature.name] = value
        if schema.label:
            p = 1.0 / (1.0 + math.exp(-(parts["tabular"] + parts["image"])))
            record[schema.label] = schema.raw_label(int(rng.random() < p))
        yield record, parts


def write_records(records, path: str, schema: Schema, fmt: str) -> int:
    """Writes records in `fmt`; returns how many.

    JSONL as is; CSV with a header, lists joined by their separator; Parquet with the
    schema's types; TFRecord as tf.Examples with images as raw JPEG/PNG bytes, the way TFX
    pipelines store them.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    columns = ([schema.key_field] if schema.key_field else []) + schema.feature_names
    columns += [schema.label] if schema.label else []
    if fmt == "parquet":
        return _write_parquet(list(records), path, schema, columns)
    if fmt == "tfrecord":
        return _write_tfrecord(records, path, schema, columns)
    count = 0
    with open(path, "w", encoding="utf-8", newline="") as out:
        if fmt == "jsonl":
            for record in records:
                out.write(json.dumps(record, separators=(",", ":")) + "\n")
                count += 1
            return count
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        separators = {f.name: f.separator for f in schema.features if f.type == STRING_LIST}
        for record in records:
            row = []
            for column in columns:
                value = record.get(column)
                if column in separators and value is not None:
                    value = separators[column].join(value)
                row.append("" if value is None else value)
            writer.writerow(row)
            count += 1
    return count


def _column_types(schema: Schema) -> dict:
    types = {f.name: f.type for f in schema.features}
    if schema.key_field:
        types[schema.key_field] = schema.key_type
    if schema.label:
        types[schema.label] = schema.raw_label_type
    return types


def _write_parquet(records: list[dict], path: str, schema: Schema, columns: list[str]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = {INT: pa.int64(), FLOAT: pa.float64(), STRING: pa.string(), IMAGE: pa.string()}
    arrow[STRING_LIST] = pa.list_(pa.string())
    types = _column_types(schema)
    table = pa.table({c: pa.array([r.get(c) for r in records], arrow[types[c]]) for c in columns})
    pq.write_table(table, path, row_group_size=max(1, len(records) // 3 + 1))
    return len(records)


def _write_tfrecord(records, path: str, schema: Schema, columns: list[str]) -> int:
    import tensorflow as tf

    types = _column_types(schema)
    count = 0
    options = "GZIP" if path.endswith(".gz") else None
    with tf.io.TFRecordWriter(path, options=options) as writer:
        for record in records:
            features = {}
            for column in columns:
                value = record.get(column)
                if value is None:
                    continue
                kind = types[column]
                if kind == INT:
                    features[column] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
                elif kind == FLOAT:
                    features[column] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
                else:
                    values = value if kind == STRING_LIST else [value]
                    raw = [base64.b64decode(v) if kind == IMAGE else v.encode() for v in values]
                    features[column] = tf.train.Feature(bytes_list=tf.train.BytesList(value=raw))
            writer.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())
            count += 1
    return count


def _draw(feature: Feature, rng: np.random.Generator):
    """One value for `feature` and its effect on the click log-odds."""
    sample = feature.sample
    if not feature.required and rng.random() < float(sample.get("missing_rate", 0.0)):
        return None, 0.0
    if feature.type == IMAGE:
        return _draw_image(feature, rng)
    if feature.type in (STRING, STRING_LIST):
        values = sample.get("values") or {f"v{k}": 0.0 for k in range(10)}
        names = list(values)
        if feature.type == STRING:
            name = names[rng.integers(len(names))]
            return name, float(values[name])
        count = int(rng.integers(0, int(sample.get("max_count", 3)) + 1))
        chosen = [names[k] for k in sorted(rng.choice(len(names), count, replace=False))]
        return chosen, float(sum(values[n] for n in chosen))
    lo = sample.get("min", feature.range[0] if feature.range else 0)
    hi = sample.get("max", feature.range[1] if feature.range else 100)
    if feature.type == INT:
        value = int(rng.integers(int(lo), int(hi) + 1))
    else:
        value = round(float(rng.uniform(lo, hi)), 4)
    effect = 0.0
    for span, span_effect in (sample.get("effects") or {}).items():
        start, end = (float(x) for x in str(span).split("-"))
        if start <= value <= end:
            effect += float(span_effect)
    if "slope" in sample and hi > lo:
        effect += float(sample["slope"]) * (value - (lo + hi) / 2) / ((hi - lo) / 2)
    return (float(value) if feature.type == FLOAT else value), effect


def _draw_image(feature: Feature, rng: np.random.Generator):
    """A base64 creative: a random-hue shape on noise; warmth of the hue drives the effect."""
    spec = feature.image
    size = int(feature.sample.get("size", max(spec.height, spec.width)))
    noise = rng.integers(60, 196, size=(size, size, 1), dtype=np.uint8)
    pixels = np.repeat(noise, 3, axis=2) if spec.channels == 3 else noise
    image = Image.fromarray(pixels if spec.channels == 3 else pixels[:, :, 0])
    hue = float(rng.random())
    warmth = math.cos(2 * math.pi * hue)  # red = +1, cyan = -1
    red, green, blue = _hue_to_rgb(hue)
    box_size = int(rng.integers(size // 3, size // 2 + 1))
    x0, y0 = (int(v) for v in rng.integers(0, size - box_size, size=2))
    draw = ImageDraw.Draw(image)
    shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
    colour = (red, green, blue) if spec.channels == 3 else int((red + green + blue) / 3)
    shape([x0, y0, x0 + box_size, y0 + box_size], fill=colour)
    buffer = io.BytesIO()
    if rng.random() < float(feature.sample.get("png_fraction", 0.0)):
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=90)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return encoded, float(feature.sample.get("effect", 0.0)) * warmth


def _hue_to_rgb(hue: float) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(hue, 0.9, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def generate_file(
    output: str, num_records: int, seed: int = 0, fmt: str = "jsonl", schema: str = "ads", first_id: int = 0
) -> int:
    """Generates `num_records` records into `output`; returns how many were written."""
    loaded = load_schema(schema)
    return write_records(generate_records(loaded, num_records, seed, first_id), output, loaded, fmt)
