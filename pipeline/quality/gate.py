"""The data-quality verdict: tonight's profile against the training profile (skew) and the
previous night's (drift), each check `ok`, `warn` or `block`.

Measures, as Vertex AI, BigQuery ML and TFDV use them: the L-infinity distance between the
shares of a category's values; the Jensen-Shannon divergence (base 2, 0..1) between the
histograms of a number (on ten bins at the reference's deciles, plus one below and one above
its range, so a unit change lands outside; bins that scale with the values, so an outlier
does not coarsen them); the change of the missing share; the shift of
the mean prediction in reference standard deviations; the record count against the median of
the last nights.

Sample size: a distance measured on few records is noise, so each limit is raised by a
sampling allowance, a bound that the measure of two samples of the *same* data stays under
with probability 1 - `DELTA`: for shares, Hoeffding's bound over the values compared; for a
histogram, the bound on the total variation of an empirical histogram (which bounds the
Jensen-Shannon divergence in bits); for a mean, a normal tail. The allowance of both sides
is added: 10 records get one above 1 while 400 get about 0.1-0.2; and a check of fewer than
`MIN_RECORDS` records on either side is shown but never judged. The checks
and their allowances are in run.json, so a verdict can be re-derived by hand.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.quality.thresholds import DISTANCE, MISSING, PREDICTION, VOLUME, QualityPolicy
from pipeline.run_contract import (
    AGAINST_PREVIOUS,
    AGAINST_TRAINING,
    CHECK_BLOCK,
    CHECK_OK,
    CHECK_WARN,
    QUALITY_ACCEPTED,
    QUALITY_BLOCKED,
    QUALITY_PASSED,
    QUALITY_WARNED,
)
from transforms.data_profile import CATEGORY, IMAGE, LIST, NUMBER, LogHistogram

DELTA = 1e-3  # chance that a clean night's measure passes its allowance
# Fewer records than this on either side: the check is measured and shown, never judged. The
# allowance already keeps noise out; this keeps out a real but tiny sample (10 test records
# with a new unit are not a night to block).
MIN_RECORDS = 100
_NORMAL_TAIL = math.sqrt(2 * math.log(2 / DELTA))  # two-sided normal bound at DELTA
HISTOGRAM_BINS = 10  # comparison bins at the reference's quantiles (plus below and above)
VOLUME_NIGHTS = 7  # nights whose median record count is "the usual"
PLOT_BARS = 12  # bars or values per series in the report's plots

OK, WARN, BLOCK = CHECK_OK, CHECK_WARN, CHECK_BLOCK
PASSED, WARNED, BLOCKED, ACCEPTED = QUALITY_PASSED, QUALITY_WARNED, QUALITY_BLOCKED, QUALITY_ACCEPTED
TRAINING, PREVIOUS = AGAINST_TRAINING, AGAINST_PREVIOUS
_SEVERITY = {OK: 0, WARN: 1, BLOCK: 2}


# --- Measures -------------------------------------------------------------------------------


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """JS divergence of two distributions (shares summing to 1), base 2: 0 same, 1 disjoint."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    m = (p + q) / 2
    return float(0.5 * _kl(p, m) + 0.5 * _kl(q, m))


def _kl(p: np.ndarray, m: np.ndarray) -> float:
    kept = p > 0
    return float(np.sum(p[kept] * np.log2(p[kept] / m[kept])))


def histogram_distance(tonight: LogHistogram, reference: LogHistogram) -> tuple[float, int]:
    """(Jensen-Shannon divergence, bins compared) of two histograms, on the reference's
    deciles (at its bins' resolution) plus one bin below and one above its range."""
    cumulative = np.cumsum(reference.counts) / reference.counts.sum()
    at = np.searchsorted(cumulative, np.arange(1, HISTOGRAM_BINS) / HISTOGRAM_BINS, side="left")
    bounds = np.unique(np.append(reference.keys[np.minimum(at, len(reference.keys) - 1)], reference.keys[-1]))
    lowest, highest = reference.keys[0], reference.keys[-1]
    bins = len(bounds) + 2  # below the reference, its segments, above it

    def shares(histogram: LogHistogram) -> np.ndarray:
        keys = histogram.keys
        inside = 1 + np.searchsorted(bounds, keys, side="left")
        which = np.where(keys < lowest, 0, np.where(keys > highest, bins - 1, inside))
        return np.bincount(which, weights=histogram.counts, minlength=bins) / histogram.counts.sum()

    return jensen_shannon(shares(tonight), shares(reference)), bins


def category_distance(tonight: dict, reference: dict) -> tuple[float, int]:
    """(L-infinity distance between the values' shares, values compared)."""
    t, r = _shares(tonight), _shares(reference)
    values = set(t) | set(r)
    if not values:
        return 0.0, 1
    return max(abs(t.get(v, 0.0) - r.get(v, 0.0)) for v in values), len(values)


def _shares(doc: dict) -> dict:
    total = doc.get("values") or 0
    return {value: count / total for value, count in doc.get("top_values", [])} if total else {}


# --- Sampling allowances ----------------------------------------------------------------------


def shares_allowance(records: int, values: int) -> float:
    """Bound on the largest error of `values` shares estimated from `records` (Hoeffding + union)."""
    return math.sqrt(math.log(2 * max(values, 1) / DELTA) / (2 * records)) if records else math.inf


def histogram_allowance(records: int, bins: int) -> float:
    """Bound on the total variation of a `bins`-bin histogram of `records` values: its mean
    (at most sqrt(bins/records)/2) plus McDiarmid's deviation. It bounds the JS divergence."""
    if not records:
        return math.inf
    return 0.5 * math.sqrt(bins / records) + math.sqrt(math.log(1 / DELTA) / (2 * records))


def mean_allowance(records: int) -> float:
    """Bound on the error of a mean of `records` values, in standard deviations."""
    return _NORMAL_TAIL / math.sqrt(records) if records else math.inf


# --- Checks -----------------------------------------------------------------------------------


def _check(
    against,
    subject,
    measure,
    check,
    value,
    policy,
    allowance,
    records,
    reference,
    feature=None,
    minimum=MIN_RECORDS,
):
    limits = policy.for_check(check, feature)
    allowance = min(allowance, 99.0)  # JSON has no infinity; anything over 1 never trips
    level = OK
    judged = records >= minimum and (reference is None or reference >= minimum)
    if value is not None and judged:
        if limits.block is not None and value > limits.block + allowance:
            level = BLOCK
        elif limits.warn is not None and value > limits.warn + allowance:
            level = WARN
    return {
        "against": against,
        "subject": subject,
        "measure": measure,
        "value": None if value is None else round(float(value), 4),
        "warn": limits.warn,
        "block": limits.block,
        "allowance": round(allowance, 4),
        "records": records,
        "reference_records": reference,
        "level": level,
        **({} if judged else {"too_few_records": MIN_RECORDS}),
    }


def feature_checks(name: str, tonight: dict, reference: dict, against: str, policy: QualityPolicy) -> list:
    """The checks of one feature: the missing share, and the distance of its values."""
    n, m = tonight["records"], reference["records"]
    missing = _rate(tonight) - _rate(reference) if n and m else None
    allowance = shares_allowance(n, 1) + shares_allowance(m, 1)
    missing = None if missing is None else abs(missing)
    checks = [_check(against, name, "missing share", MISSING, missing, policy, allowance, n, m)]
    kind = tonight["kind"]
    # Sample sizes: the rows whose values were profiled (for a list, rows, not its items,
    # which are not independent of each other).
    present, present_ref = _profiled(tonight), _profiled(reference)
    if kind in (CATEGORY, LIST):
        distance, values = (None, 1)
        if tonight.get("values") and reference.get("values"):
            distance, values = category_distance(tonight, reference)
        allowance = shares_allowance(present, values) + shares_allowance(present_ref, values)
        measure = "L-infinity" if kind == CATEGORY else "L-infinity of the values"
        checks.append(
            _check(against, name, measure, DISTANCE, distance, policy, allowance, present, present_ref, name)
        )
    if kind in (NUMBER, LIST, IMAGE):
        grid = LogHistogram.from_json(tonight.get("histogram"))
        grid_ref = LogHistogram.from_json(reference.get("histogram"))
        distance, bins = (None, HISTOGRAM_BINS + 2)
        if grid.total and grid_ref.total:
            distance, bins = histogram_distance(grid, grid_ref)
        allowance = histogram_allowance(present, bins) + histogram_allowance(present_ref, bins)
        measure = {
            NUMBER: "Jensen-Shannon",
            LIST: "Jensen-Shannon of the lengths",
            IMAGE: "Jensen-Shannon of the sizes",
        }[kind]
        checks.append(
            _check(against, name, measure, DISTANCE, distance, policy, allowance, present, present_ref, name)
        )
    return checks


def _profiled(doc: dict) -> int:
    """How many of a feature's rows had their values profiled (a sample: see SAMPLE_ROWS)."""
    if "profiled" in doc:
        return int(doc["profiled"])
    if doc["kind"] == CATEGORY:
        return int(doc.get("values", 0))
    return LogHistogram.from_json(doc.get("histogram")).total


def _rate(doc: dict) -> float:
    return doc["missing"] / doc["records"] if doc["records"] else 0.0


def prediction_checks(name: str, tonight: dict, reference: dict, against: str, policy: QualityPolicy) -> list:
    """The shift of an output's mean, in the reference's standard deviations."""
    n, m = _profiled(tonight), _profiled(reference)
    shift = None
    if n and m and tonight.get("mean") is not None and reference.get("mean") is not None:
        # A constant reference (std 0) still gets a scale: a millionth of its mean's size.
        spread = max(reference.get("std") or 0.0, 1e-6 * max(1.0, abs(reference["mean"])))
        shift = min(abs(tonight["mean"] - reference["mean"]) / spread, 1e6)
    allowance = mean_allowance(n) + mean_allowance(m)
    return [_check(against, f"output {name}", "mean shift (std)", PREDICTION, shift, policy, allowance, n, m)]


def volume_check(records: int, history: list, policy: QualityPolicy) -> dict:
    usual = float(np.median(history[-VOLUME_NIGHTS:]))
    change = abs(records - usual) / usual if usual else None  # no usual volume to compare with
    # Exact counts, no sampling: judged whatever the number (a night of 50 records where
    # 1,000,000 are usual is the drop that matters most).
    value = None if change is None else min(change, 1e6)
    check = _check(
        PREVIOUS, "volume", "records vs usual", VOLUME, value, policy, 0.0, records, None, minimum=0
    )
    check["usual"] = usual
    check["nights"] = len(history[-VOLUME_NIGHTS:])
    return check


# --- The verdict ------------------------------------------------------------------------------


def judge_quality(
    policy: QualityPolicy,
    tonight: dict,
    training: dict | None,
    previous: dict | None,
    training_why: str = "",
    previous_why: str = "",
) -> dict:
    """run.json's `quality`: every check, the flagged subjects with their plots, the verdict.

    `tonight`, `training` and `previous` are profiles ({"records", "features", "outputs"}; the
    previous night's also its "volume_history" and "run"); None where there is none, with
    `training_why` / `previous_why` saying why.
    """
    checks = []
    references = {}
    if training is not None:
        references[TRAINING] = training
    if previous is not None:
        references[PREVIOUS] = previous
    for against, reference in references.items():
        for name, doc in tonight["features"].items():
            if name in reference.get("features", {}):
                checks += feature_checks(name, doc, reference["features"][name], against, policy)
        for name, doc in tonight.get("outputs", {}).items():
            if name in reference.get("outputs", {}):
                checks += prediction_checks(name, doc, reference["outputs"][name], against, policy)
    history = list(previous.get("volume_history", [])) if previous else []
    if history:
        checks.append(volume_check(tonight["records"], history, policy))
    level = max((c["level"] for c in checks), key=_SEVERITY.get, default=OK)
    verdict = {OK: PASSED, WARN: WARNED, BLOCK: BLOCKED}[level]
    if verdict == BLOCKED and policy.accept:
        verdict = ACCEPTED
    return {
        "verdict": verdict,
        "skew": {"checked": True, "reference": training.get("source", "training profile")}
        if training is not None
        else {"checked": False, "why": training_why or "no training profile"},
        "drift": {"checked": True, "reference": previous.get("source", "previous night")}
        if previous is not None
        else {"checked": False, "why": previous_why or "no previous night"},
        "thresholds": policy.to_json(),
        "flagged": flagged_subjects(checks, tonight, references),
        "checks": checks,
        "volume_history": (history + [tonight["records"]])[-VOLUME_NIGHTS:],
    }


def flagged_subjects(checks: list, tonight: dict, references: dict) -> list[dict]:
    """One entry per feature, output or the volume with a check at warn or block: its level,
    its checks, and a plot of tonight against each reference."""
    by_subject: dict[str, list] = {}
    for check in checks:
        if check["level"] != OK:
            by_subject.setdefault(check["subject"], []).append(check)
    flagged = []
    for subject, subject_checks in by_subject.items():
        level = max((c["level"] for c in subject_checks), key=_SEVERITY.get)
        plot = _plot(subject, tonight, references)
        flagged.append({"subject": subject, "level": level, "checks": subject_checks, "plot": plot})
    return sorted(flagged, key=lambda f: (-_SEVERITY[f["level"]], f["subject"]))


def _plot(subject: str, tonight: dict, references: dict) -> dict | None:
    """{"kind", "labels", "series": {"tonight": shares, training: ..., previous night: ...}}."""
    group, name = (
        ("outputs", subject[len("output ") :]) if subject.startswith("output ") else ("features", subject)
    )
    docs = {"tonight": tonight.get(group, {}).get(name)}
    for against, reference in references.items():
        docs[against] = reference.get(group, {}).get(name)
    docs = {label: doc for label, doc in docs.items() if doc}
    if not docs or "tonight" not in docs:
        return None
    kind = docs["tonight"]["kind"]
    if kind == CATEGORY or (kind == LIST and all(d.get("top_values") for d in docs.values())):
        return _category_plot(docs)
    grids = {label: LogHistogram.from_json(doc.get("histogram")) for label, doc in docs.items()}
    grids = {label: grid for label, grid in grids.items() if grid.total}
    return _number_plot(
        grids, "sizes (bytes)" if kind == IMAGE else ("lengths" if kind == LIST else "values")
    )


def _category_plot(docs: dict) -> dict:
    shares = {label: _shares(doc) for label, doc in docs.items()}
    ranked: dict[str, float] = {}
    for found in shares.values():
        for value, share in found.items():
            ranked[value] = max(ranked.get(value, 0.0), share)
    labels = sorted(ranked, key=lambda v: (-ranked[v], v))[: PLOT_BARS - 1]
    series = {}
    for label, found in shares.items():
        values = [round(found.get(v, 0.0), 4) for v in labels]
        series[label] = values + [round(max(1.0 - sum(found.get(v, 0.0) for v in labels), 0.0), 4)]
    return {"kind": "categories", "labels": labels + ["(other)"], "series": series}


def _number_plot(histograms: dict, what: str) -> dict | None:
    """The series' shares in at most PLOT_BARS bars: the bins of all series, in order, grouped
    into bars of as many bins each (so an outlier gets a bar of its own, not the whole axis)."""
    if not histograms:
        return None
    keys = np.unique(np.concatenate([h.keys for h in histograms.values()]))
    group = (np.arange(len(keys)) * min(PLOT_BARS, len(keys))) // len(keys)
    bars = int(group[-1]) + 1
    series = {}
    for label, histogram in histograms.items():
        which = group[np.searchsorted(keys, histogram.keys)]
        counts = np.bincount(which, weights=histogram.counts, minlength=bars)
        series[label] = [round(float(v), 4) for v in counts / counts.sum()]
    low, high = LogHistogram.edges_of(keys)
    firsts = np.searchsorted(group, np.arange(bars))
    edges = [f"{v:.4g}" for v in low[firsts]] + [f"{high[-1]:.4g}"]
    return {"kind": "histogram", "what": what, "edges": edges, "series": series}


class QualityConfig:
    """What a run's gate compares with and by which limits, fixed before the run starts: the
    training profile and the previous night (profiles, or None with why not)."""

    def __init__(
        self,
        policy,
        training=None,
        previous=None,
        training_why="",
        previous_why="",
        count_duplicate_keys=True,
    ):
        self.policy = policy
        self.count_duplicate_keys = count_duplicate_keys
        self.training, self.previous = training, previous
        self.training_why, self.previous_why = training_why, previous_why

    @property
    def vocabularies(self) -> dict:
        """name -> the values the model knows, from the training profile."""
        features = (self.training or {}).get("features", {})
        return {name: tuple(doc["vocabulary"]) for name, doc in features.items() if doc.get("vocabulary")}

    def judge(self, tonight: dict) -> dict:
        return judge_quality(
            self.policy, tonight, self.training, self.previous, self.training_why, self.previous_why
        )
