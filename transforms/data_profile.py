"""A data profile: what a set of ad records looks like, feature by feature, in a few kilobytes.

The training profile (`TRAINING_PROFILE_FILE` in a model directory: `adpredict analyze`
profiles the training records, the trainer adds the model's outputs on the eval split) and
every run's profile (in its `run.json`, for the next night to compare with) have this one
format, so a run's data-quality gate (`pipeline.quality`) compares like with like.

Per feature: how many records had it and how many lacked it; numbers as a `LogHistogram`
(with sum and sum of squares); categories as Misra-Gries top values (tfx_bsl's sketch, the
one TFDV uses) and, given the model's vocabulary, how many values fall outside it; string
lists as a length histogram plus value counts; images as a histogram of their encoded
sizes. Every accumulator stays the same size however many records it sees and merges in
any order (the histograms exactly, the top values within the sketch's bound), and takes whole
Arrow columns: no Python per record.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NUMBER = "number"
CATEGORY = "category"
LIST = "list"
IMAGE = "image"
KIND_OF_TYPE = {"int": NUMBER, "float": NUMBER, "string": CATEGORY, "string_list": LIST, "image": IMAGE}

# Rows of a block whose values are profiled (every n-th row, evenly spread): the counts of
# rows and of missing values take every row, the distributions a sample, so profiling costs
# the same per block however big it is (a night of blocks of 65,536 rows: a 6% sample,
# hundreds of thousands of values a night).
SAMPLE_ROWS = 4096
TOP_VALUES = 128  # Misra-Gries buckets per category: a value under 1/129 of them may be left out
FORMAT_VERSION = 1


class LogHistogram:
    """Counts of numbers in bins that scale with the numbers: 2**MANTISSA_BITS bins per power
    of two (each about 9% of its values wide), mirrored for negatives, zero apart.

    A bin is a function of the value alone, so profiles merge exactly in any order and two
    profiles compare bin by bin; and unlike a grid spanning [min, max], one outlier (a 1e7
    among ages) adds one bin instead of coarsening all of them. Stored sparse: only bins
    with values (a feature spanning 10 powers of two uses at most 80).
    """

    MANTISSA_BITS = 3
    _OFFSET = 1100  # above the magnitude of any float64 exponent

    def __init__(self):
        self.keys = np.zeros(0, np.int64)  # sorted bin keys
        self.counts = np.zeros(0, np.int64)
        self.lo, self.hi = math.inf, -math.inf

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @classmethod
    def key_of(cls, values: np.ndarray) -> np.ndarray:
        """Bin keys, ordered as the values are: 0 for zero, +-(bin number) otherwise."""
        mantissa, exponent = np.frexp(np.abs(values))  # |v| = mantissa * 2**exponent, mantissa in [0.5, 1)
        steps = 1 << cls.MANTISSA_BITS
        sub = np.minimum(np.floor((mantissa - 0.5) * 2 * steps).astype(np.int64), steps - 1)
        magnitude = (exponent.astype(np.int64) + cls._OFFSET) * steps + sub + 1
        return np.where(values == 0, 0, np.sign(values).astype(np.int64) * magnitude)

    @classmethod
    def edges_of(cls, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) value edges of bins `keys`."""
        keys = np.asarray(keys, np.int64)
        steps = 1 << cls.MANTISSA_BITS
        magnitude = np.abs(keys) - 1
        exponent, sub = magnitude // steps - cls._OFFSET, magnitude % steps
        low = np.ldexp(0.5 + sub / (2 * steps), exponent)
        high = np.ldexp(0.5 + (sub + 1) / (2 * steps), exponent)
        low, high = np.where(keys < 0, -high, low), np.where(keys < 0, -low, high)
        return np.where(keys == 0, 0.0, low), np.where(keys == 0, 0.0, high)

    def add(self, values: np.ndarray, weight: int = 1) -> None:
        values = np.asarray(values, np.float64).ravel()
        if not len(values):
            return
        self.lo, self.hi = min(self.lo, float(values.min())), max(self.hi, float(values.max()))
        keys, counts = np.unique(self.key_of(values), return_counts=True)
        self._fold(keys, counts * int(weight))

    def merge(self, other: LogHistogram) -> None:
        if other.total:
            self.lo, self.hi = min(self.lo, other.lo), max(self.hi, other.hi)
            self._fold(other.keys, other.counts)

    def _fold(self, keys: np.ndarray, counts: np.ndarray) -> None:
        merged, inverse = np.unique(np.concatenate([self.keys, keys]), return_inverse=True)
        self.counts = np.bincount(
            inverse, weights=np.concatenate([self.counts, counts]), minlength=len(merged)
        )
        self.counts = self.counts.astype(np.int64)
        self.keys = merged

    def to_json(self) -> dict:
        return {
            "mantissa_bits": self.MANTISSA_BITS,
            "keys": self.keys.tolist(),
            "counts": self.counts.tolist(),
            "min": self.lo if self.total else None,
            "max": self.hi if self.total else None,
        }

    @classmethod
    def from_json(cls, doc: dict | None) -> LogHistogram:
        histogram = cls()
        if doc and doc.get("counts") and doc.get("mantissa_bits") == cls.MANTISSA_BITS:
            histogram.keys = np.asarray(doc["keys"], np.int64)
            histogram.counts = np.asarray(doc["counts"], np.int64)
            histogram.lo, histogram.hi = float(doc["min"]), float(doc["max"])
        return histogram


class TopValues:
    """Counts of the most frequent values of a string column: tfx_bsl's Misra-Gries sketch
    (C++, fed whole Arrow arrays). Its estimates are exact while there are no more distinct
    values than buckets; beyond, a count may be off by up to total/(buckets+1) (tfx_bsl
    reports the upper bound). Pickles as bytes."""

    def __init__(self, buckets: int = TOP_VALUES):
        from tfx_bsl import sketches

        self.buckets = buckets
        self.total = 0  # values added (nulls excluded)
        self._sketch = sketches.MisraGriesSketch(buckets)

    def add(self, values: pa.Array, weight: float = 1.0) -> None:
        """Adds `values`, each standing for `weight` values (a sample's stride)."""
        values = values.drop_null()
        if not len(values):
            return
        self.total += len(values) * weight
        if weight == 1:
            self._sketch.AddValues(values)
        else:
            self._sketch.AddValues(values, pa.array(np.full(len(values), weight, np.float32)))

    def merge(self, other: TopValues) -> None:
        self.total += other.total
        self._sketch.Merge(other._sketch)

    def counts(self) -> list[tuple[str, float]]:
        """(value, estimated count), most frequent first (ties by value)."""
        found = self._sketch.Estimate().to_pylist()
        pairs = [(_text(item["values"]), float(item["counts"])) for item in found]
        return sorted(pairs, key=lambda pair: (-pair[1], pair[0]))

    def __getstate__(self):
        return {"buckets": self.buckets, "total": self.total, "sketch": self._sketch.Serialize()}

    def __setstate__(self, state):
        from tfx_bsl import sketches

        self.buckets, self.total = state["buckets"], state["total"]
        self._sketch = sketches.MisraGriesSketch.Deserialize(state["sketch"])


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class FeatureProfile:
    """One feature's (or model output's) profile; `kind` is one of NUMBER, CATEGORY, LIST, IMAGE.

    `vocabulary` (categories and lists): the values the model knows, to count the rest as
    out of vocabulary."""

    def __init__(self, kind: str, vocabulary: frozenset | tuple = ()):
        self.kind = kind
        self.records = 0  # rows seen
        self.missing = 0  # rows without a value (null)
        self.sampled = 0  # rows whose values were profiled (see SAMPLE_ROWS)
        self.profiled = 0  # of them, those with a value: the sample size of the distributions
        self.nonfinite = 0  # numbers: NaN or infinite values among them, left out of the grid
        self.errors = 0  # error records that named this field (shown, not judged)
        self.sum = self.sum_squares = 0.0  # numbers: of the finite values
        self.grid = LogHistogram()
        self.top = TopValues() if kind in (CATEGORY, LIST) else None
        self.vocabulary = tuple(sorted(vocabulary))
        self.out_of_vocabulary = 0  # values (not rows) outside `vocabulary`, when one is given
        self._value_set = None

    def add(self, column: pa.Array, sample: pa.Array | None = None, weight: float = 1.0) -> None:
        """Counts every row of `column` and profiles the values of `sample` (every
        `weight`-th row of it; default: all of it)."""
        self.count(len(column), column.null_count)
        self.add_values(column if sample is None else sample, weight)

    def count(self, rows: int, missing: int = 0) -> None:
        self.records += rows
        self.missing += missing

    def add_values(self, column: pa.Array, weight: float = 1.0) -> None:
        """Profiles the values of `column`, a sample of the rows counted in which each row
        stands for `weight` rows: the distributions are weighted by it, so blocks sampled at
        different strides (a small file's block whole, a big one's every 16th row) add up
        to the distribution of all the rows."""
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        self.sampled += len(column)
        present = column.drop_null()
        self.profiled += len(present)
        if self.kind == NUMBER:
            values = present.to_numpy(zero_copy_only=False).astype(np.float64)
            finite = np.isfinite(values)
            if not finite.all():
                self.nonfinite += int((~finite).sum())
                values = values[finite]
            self.sum += float(values.sum()) * weight
            self.sum_squares += float(np.dot(values, values)) * weight
            self._add_to_grid(values, weight)
        elif self.kind == CATEGORY:
            self.top.add(present, weight)
            self._count_out_of_vocabulary(present, weight)
        elif self.kind == LIST:
            self._add_to_grid(pc.list_value_length(present).to_numpy(zero_copy_only=False), weight)
            flat = pc.list_flatten(present)
            self.top.add(flat, weight)
            self._count_out_of_vocabulary(flat, weight)
        elif self.kind == IMAGE and len(present):  # base64 text of n characters: about 3n/4 bytes
            self._add_to_grid((pc.binary_length(present).to_numpy(zero_copy_only=False) * 3) // 4, weight)

    def _add_to_grid(self, values: np.ndarray, weight: float) -> None:
        self.grid.add(values, int(weight))

    def _count_out_of_vocabulary(self, values: pa.Array, weight: float) -> None:
        if not self.vocabulary:
            return
        if self._value_set is None:
            self._value_set = pa.array(self.vocabulary, pa.string())
        known = pc.is_in(values.drop_null(), value_set=self._value_set)
        self.out_of_vocabulary += int((len(known) - int(pc.sum(known).as_py() or 0)) * weight)

    def merge(self, other: FeatureProfile) -> None:
        self.records += other.records
        self.missing += other.missing
        self.sampled += other.sampled
        self.profiled += other.profiled
        self.nonfinite += other.nonfinite
        self.errors += other.errors
        self.sum += other.sum
        self.sum_squares += other.sum_squares
        self.grid.merge(other.grid)
        if self.top is not None and other.top is not None:
            self.top.merge(other.top)
        self.out_of_vocabulary += other.out_of_vocabulary

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_value_set"}

    def __setstate__(self, state):
        self.__dict__.update(state, _value_set=None)

    def to_json(self) -> dict:
        doc = {"kind": self.kind, "records": self.records, "missing": self.missing, "sampled": self.sampled,
               "profiled": self.profiled, "errors": self.errors}  # fmt: skip
        if self.kind == NUMBER:
            finite = self.grid.total
            mean = self.sum / finite if finite else None
            variance = max(self.sum_squares / finite - mean * mean, 0.0) if finite else None
            doc.update(mean=mean, std=math.sqrt(variance) if finite else None, nonfinite=self.nonfinite)
        if self.kind != CATEGORY:
            doc["histogram"] = self.grid.to_json()  # numbers; list lengths; image bytes
        if self.top is not None:
            doc["values"] = int(round(self.top.total))
            doc["top_values"] = [[value, count] for value, count in self.top.counts()]
            if self.vocabulary:
                doc["vocabulary"] = list(self.vocabulary)
                doc["out_of_vocabulary"] = self.out_of_vocabulary
        return doc


class DataProfile:
    """Profiles of the fields of `fields` ((name, type) pairs) over blocks of records; a field
    a block lacks counts as missing there."""

    def __init__(self, fields, vocabularies: dict | None = None):
        vocabularies = vocabularies or {}
        self.records = 0
        self.features = {
            name: FeatureProfile(KIND_OF_TYPE[type_], vocabularies.get(name, ())) for name, type_ in fields
        }

    def add_batch(self, batch: pa.RecordBatch) -> None:
        self.records += batch.num_rows
        names = [name for name in self.features if name in set(batch.schema.names)]
        rows, stride = sample_rows(batch.num_rows)
        sample = batch.select(names) if rows is None else batch.select(names).take(rows)
        for name, profile in self.features.items():
            if name in names:
                profile.add(batch.column(name), sample.column(name), stride)
            else:
                profile.records += batch.num_rows
                profile.missing += batch.num_rows

    def add_errors(self, error_records: list) -> None:
        for record in error_records:
            field = record.get("error", {}).get("field")
            if field in self.features:
                self.features[field].errors += 1

    def add_outputs(self, outputs: dict) -> None:
        """Model outputs (name -> array, one row per record): profiled as numbers; an output
        of several values per record by its first (the models adpredict trains have one)."""
        rows = len(next(iter(outputs.values()), ()))
        stride = sample_rows(rows)[1]
        for name, values in outputs.items():
            values = np.asarray(values)
            if values.dtype.kind not in "biuf" or not values.size:
                continue
            first = values.reshape(len(values), -1)[:, 0] if values.ndim > 1 else values
            profile = self.features.setdefault(name, FeatureProfile(NUMBER))
            profile.count(rows)
            profile.add_values(pa.array(first[::stride]), stride)
        self.records += rows

    def merge(self, other: DataProfile) -> None:
        self.records += other.records
        for name, profile in other.features.items():
            if name in self.features:
                self.features[name].merge(profile)
            else:
                self.features[name] = profile

    def to_json(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "records": self.records,
            "features": {name: profile.to_json() for name, profile in self.features.items()},
        }


def sample_rows(rows: int) -> tuple[pa.Array | None, int]:
    """(every n-th row of a block of `rows`, n): at most SAMPLE_ROWS rows (None, 1: all)."""
    if rows <= SAMPLE_ROWS:
        return None, 1
    stride = -(-rows // SAMPLE_ROWS)
    return pa.array(np.arange(0, rows, stride, dtype=np.int64)), stride


def with_training_vocabularies(profile: dict, top_k: dict) -> dict:
    """A training profile with, for each category (and list) feature in `top_k` (name -> the
    vocabulary size tf.Transform keeps), the values its vocabulary holds and the share of
    values outside it: the `top_k` most frequent, as the profile's sketch counts them (exact
    while a feature has at most `TOP_VALUES` distinct values)."""
    for name, size in top_k.items():
        doc = profile["features"].get(name)
        if not doc or "top_values" not in doc:
            continue
        kept = doc["top_values"][:size]
        doc["vocabulary"] = [value for value, _ in kept]
        doc["out_of_vocabulary"] = max(int(round(doc["values"] - sum(count for _, count in kept))), 0)
    return profile


def outputs_profile(outputs: dict) -> dict:
    """Model outputs (name -> array of one value per record) as profiles, by name (JSON)."""
    profile = DataProfile(())
    profile.add_outputs(outputs)
    return {name: doc for name, doc in profile.to_json()["features"].items()}
