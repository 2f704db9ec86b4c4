"""The data-quality gate's limits: for each check a `warn` and a `block` level, one default per
check and, for the distance of a feature, one per feature.

Written `NAME=WARN:BLOCK` in a flag (`--quality_threshold distance=0.1:0.3`, repeated, or
several separated by commas, as a Flex Template parameter takes them) and as
a mapping in the nightly config (`quality_thresholds: {distance: "0.1:0.3"}`); `off` for a
level turns it off (`feature.bid=0.2:off` only warns about bid). The defaults block only a
gross shift: a distance of 0.3 is Vertex AI's default alert threshold for both measures.
"""

from __future__ import annotations

import dataclasses

from pipeline.run_contract import OptionsError

DISTANCE = "distance"  # L-infinity (categories) or Jensen-Shannon (numbers), 0..1
MISSING = "missing"  # change of the share of records without the feature, 0..1
VOLUME = "volume"  # |records - usual| / usual, the usual being the median of the last nights
PREDICTION = "prediction"  # |mean prediction - reference mean| / reference standard deviation
FEATURE_PREFIX = "feature."  # feature.NAME=WARN:BLOCK: the distance limits of one feature


@dataclasses.dataclass(frozen=True)
class Limits:
    warn: float | None
    block: float | None

    def __str__(self) -> str:
        return f"{_level(self.warn)}:{_level(self.block)}"


DEFAULT_LIMITS = {
    DISTANCE: Limits(0.1, 0.3),
    MISSING: Limits(0.1, 0.3),
    VOLUME: Limits(0.2, 0.4),
    PREDICTION: Limits(0.5, 1.0),
}
CHECKS = tuple(DEFAULT_LIMITS)


@dataclasses.dataclass(frozen=True)
class QualityPolicy:
    """What the gate does: the limits, and whether a blocked run publishes anyway (`accept`,
    for a night a person reviewed) or the gate runs at all (`enabled`)."""

    limits: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_LIMITS))
    features: dict = dataclasses.field(default_factory=dict)  # feature -> distance Limits
    accept: bool = False
    enabled: bool = True

    def for_check(self, check: str, feature: str | None = None) -> Limits:
        if check == DISTANCE and feature in self.features:
            return self.features[feature]
        return self.limits[check]

    def to_json(self) -> dict:
        return {
            **{name: str(limits) for name, limits in self.limits.items()},
            **{FEATURE_PREFIX + name: str(limits) for name, limits in sorted(self.features.items())},
        }


def parse_policy(entries, where: str = "--quality_threshold", accept: bool = False, enabled: bool = True):
    """A policy from `NAME=WARN:BLOCK` entries (a list of strings, or a mapping NAME -> "WARN:BLOCK")."""
    if isinstance(entries, dict):
        entries = [f"{name}={value}" for name, value in entries.items()]
    limits, features = dict(DEFAULT_LIMITS), {}
    entries = [part for entry in entries or () for part in str(entry).split(",") if part.strip()]
    for entry in entries:
        name, _, value = str(entry).partition("=")
        name = name.strip()
        parsed = _parse_limits(value, f"{where} {entry!r}")
        if name.startswith(FEATURE_PREFIX) and len(name) > len(FEATURE_PREFIX):
            features[name[len(FEATURE_PREFIX) :]] = parsed
        elif name in DEFAULT_LIMITS:
            limits[name] = parsed
        else:
            raise OptionsError(
                f"{where} {entry!r}: unknown check {name!r}; give one of {', '.join(CHECKS)} or "
                f"{FEATURE_PREFIX}<feature name>, as NAME=WARN:BLOCK (e.g. distance=0.1:0.3)"
            )
    return QualityPolicy(limits, features, accept=accept, enabled=enabled)


def _parse_limits(text: str, where: str) -> Limits:
    parts = text.split(":")
    if len(parts) != 2:
        raise OptionsError(
            f"{where}: expected NAME=WARN:BLOCK, e.g. distance=0.1:0.3 (off turns a level off)"
        )
    levels = []
    for part in parts:
        part = part.strip()
        if part == "off":
            levels.append(None)
            continue
        try:
            level = float(part)
        except ValueError:
            level = -1.0
        if not level >= 0:
            raise OptionsError(f"{where}: {part!r} is not a number >= 0 or off")
        levels.append(level)
    warn, block = levels
    if warn is not None and block is not None and warn > block:
        raise OptionsError(f"{where}: the warn level {warn:g} is above the block level {block:g}")
    return Limits(warn, block)


def _level(value: float | None) -> str:
    return "off" if value is None else f"{value:g}"
