"""The run's profiles, computed inside the pipeline like its counts: of the records that passed
validation, of the model's outputs, and of duplicate keys.

Each is a CombineFn over whole blocks (Arrow columns, numpy arrays): no Python per record, an
accumulator of a fixed size (`transforms.data_profile`), merged in any order. Error records
are only counted per field: a night of malformed records is `--max_error_rate`'s business.
Duplicate keys are counted exactly, the keys split by a hash into `KEY_PARTITIONS` parts
that are counted apart (so no worker holds every key of a big run).
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.blocks import RecordBlock, ScoredBlock, string_buffer_view
from transforms.data_profile import DataProfile

KEY_PARTITIONS = 16
DUPLICATE_EXAMPLES = 5  # keys shown of those that repeat, the most repeated first


class ProfileRecordsFn(beam.CombineFn):
    """RecordBlocks and lists of error records -> the `DataProfile` of `fields` ((name, type)),
    as JSON; `vocabularies` (name -> values the model knows) counts the values outside them."""

    def __init__(self, fields, vocabularies: dict | None = None):
        self._fields = tuple(fields)
        self._vocabularies = dict(vocabularies or {})

    def create_accumulator(self):
        return DataProfile(self._fields, self._vocabularies)

    def add_input(self, profile, item):
        if isinstance(item, RecordBlock):
            profile.add_batch(item.batch)
        else:
            profile.add_errors(item)
        return profile

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators, None) or self.create_accumulator()
        for profile in accumulators:
            merged.merge(profile)
        return merged

    def extract_output(self, profile):
        return profile.to_json()


class ProfileOutputsFn(ProfileRecordsFn):
    """ScoredBlocks -> the profile of each numeric model output, as JSON."""

    def __init__(self):
        super().__init__(())

    def add_input(self, profile, scored: ScoredBlock):
        profile.add_outputs(scored.outputs)
        return profile


def key_partitions(keys: pa.Array, partitions: int) -> np.ndarray:
    """A part in [0, partitions) for every key, the same for equal keys in any block: a
    multiplicative hash of integers, a polynomial hash of the UTF-8 bytes of strings."""
    if pa.types.is_integer(keys.type):
        mixed = keys.to_numpy(zero_copy_only=False).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        return ((mixed >> np.uint64(40)) % np.uint64(partitions)).astype(np.int64)
    keys = pc.cast(keys, pa.string())
    data, offsets = string_buffer_view(keys)
    lengths = np.diff(offsets)
    if not len(data):
        return np.zeros(len(keys), np.int64)
    position = np.arange(len(data)) - np.repeat(offsets[:-1], lengths)
    powers = np.cumprod(np.full(int(lengths.max()), 0x100000001B3, np.uint64), dtype=np.uint64)
    terms = (data.astype(np.uint64) + np.uint64(1)) * powers[position]
    starts = offsets[:-1][lengths > 0]
    sums = np.zeros(len(keys), np.uint64)
    sums[lengths > 0] = np.add.reduceat(terms, starts)
    return ((sums >> np.uint64(40)) % np.uint64(partitions)).astype(np.int64)


class PartitionKeysFn(beam.DoFn):
    """RecordBlocks -> (part, that part's keys of the block); error lists are skipped."""

    def __init__(self, key_field: str, partitions: int = KEY_PARTITIONS):
        self._key_field = key_field
        self._partitions = partitions

    def process(self, item):
        if not isinstance(item, RecordBlock) or not len(item):
            return
        keys = item.batch.column(self._key_field).drop_null()
        part = key_partitions(keys, self._partitions)
        order = np.argsort(part, kind="stable")
        ordered = keys.take(pa.array(order))
        bounds = np.searchsorted(part[order], np.arange(self._partitions + 1))
        for index in range(self._partitions):
            if bounds[index + 1] > bounds[index]:
                yield index, ordered.slice(bounds[index], bounds[index + 1] - bounds[index])


class KeyCountsFn(beam.CombineFn):
    """Keys of one part -> how many repeat: {"extra_records", "keys", "examples"}.

    The accumulator is the part's distinct keys with their counts (an Arrow table), plus
    arrays not yet folded in: they are folded when they outgrow the table."""

    def create_accumulator(self):
        return [None, []]  # (key, count) table, pending key arrays

    def add_input(self, accumulator, keys):
        accumulator[1].append(keys)
        pending = sum(len(k) for k in accumulator[1])
        if pending > max(65536, len(accumulator[0]) if accumulator[0] is not None else 0):
            self._fold(accumulator)
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        tables = []
        for table, pending in accumulators:
            merged[1].extend(pending)
            if table is not None:
                tables.append(table)
        if tables:
            merged[0] = _sum_counts(pa.concat_tables(tables))
        return merged

    def extract_output(self, accumulator):
        self._fold(accumulator)
        table = accumulator[0]
        if table is None:
            return {"extra_records": 0, "keys": 0, "examples": []}
        repeated = table.filter(pc.greater(table.column("count"), 1))
        counts = repeated.column("count").to_numpy()
        order = np.argsort(-counts, kind="stable")[:DUPLICATE_EXAMPLES]
        keys = repeated.column("key").to_pylist()
        return {
            "extra_records": int((counts - 1).sum()),
            "keys": len(counts),
            "examples": [[str(keys[i]), int(counts[i])] for i in order],
        }

    @staticmethod
    def _fold(accumulator):
        if not accumulator[1]:
            return
        keys = pa.chunked_array(accumulator[1]).combine_chunks()
        counted = pc.value_counts(keys).flatten()
        table = pa.table({"key": counted[0], "count": pc.cast(counted[1], pa.int64())})
        if accumulator[0] is not None:
            table = _sum_counts(pa.concat_tables([accumulator[0], table]))
        accumulator[0], accumulator[1] = table, []


def _sum_counts(table: pa.Table) -> pa.Table:
    summed = table.group_by("key").aggregate([("count", "sum")])
    return pa.table({"key": summed.column("key"), "count": summed.column("count_sum")})


class DuplicateKeysFn(beam.CombineFn):
    """The parts' results -> one: records whose key came before, keys that repeat, examples."""

    def create_accumulator(self):
        return {"extra_records": 0, "keys": 0, "examples": []}

    def add_input(self, accumulator, part):
        return self.merge_accumulators([accumulator, part])

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for found in accumulators:
            merged["extra_records"] += found["extra_records"]
            merged["keys"] += found["keys"]
            merged["examples"] += found["examples"]
        merged["examples"] = sorted(merged["examples"], key=lambda e: (-e[1], e[0]))[:DUPLICATE_EXAMPLES]
        return merged

    def extract_output(self, accumulator):
        return accumulator


class CountDuplicateKeys(beam.PTransform):
    """The record stream -> per part, its keys counted (`KeyCountsFn`); `DuplicateKeysFn`
    adds the parts up (as the run's last step's side input)."""

    def __init__(self, key_field: str):
        super().__init__()
        self._key_field = key_field

    def expand(self, records):
        return (
            records
            | "PartitionKeys" >> beam.ParDo(PartitionKeysFn(self._key_field))
            | "CountKeys" >> beam.CombinePerKey(KeyCountsFn())
            | "PartResults" >> beam.Values()
        )
