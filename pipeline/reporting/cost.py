"""What a run cost: worker-seconds, records per second per vCPU, and an estimated price per
million predictions (run.json's `cost`, shown by the report and the end-of-run summary).

An estimate, not a bill: workers x the pipeline's wall time x an hourly price per machine
type from a small price table that people edit (`prices.yaml` beside this module, whose
prices are examples; a run reads another through the `price_table` option when one is
declared). What a run ran on is known at launch on Dataflow (the worker options) and at
its end locally (this machine's CPUs), so the basis is taken from the options when the
graph is built and the figures when the run ends; `assumptions` words what was assumed.
"""

from __future__ import annotations

import math
import os
import re

PRICE_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prices.yaml")
PRICE_TABLE_OPTION = "price_table"  # the pipeline option naming another table, once declared
LOCAL = "local"  # the price table's row for a run on the launching machine
DATAFLOW_DEFAULT_MACHINE = "n1-standard-1"  # what Dataflow gives a batch job without --machine_type
# Runner names, as the runners package spells them (reporting sits below it in the layers).
_DATAFLOW = "DataflowRunner"


def load_prices(path: str | None = None) -> dict:
    """The price table at `path` (local or gs://; default: the one shipped beside this module)
    as {"source", "examples", "machines": {type: {"usd_per_hour", "vcpus"}}}. A table that
    cannot be read or makes no sense raises ValueError naming it; the default table missing
    (an install without package data) gives no prices, said in "missing"."""
    import yaml
    from apache_beam.io.filesystems import FileSystems

    source = path or PRICE_TABLE
    if path is None and not os.path.exists(source):
        return {"source": None, "examples": False, "machines": {}, "missing": f"{source} is not installed"}
    try:
        with FileSystems.open(source) as f:
            doc = yaml.safe_load(f.read().decode("utf-8"))
        machines = {
            str(name): {
                "usd_per_hour": float(row["usd_per_hour"]),
                "vcpus": None if row.get("vcpus") is None else float(row["vcpus"]),
            }
            for name, row in (doc.get("machines") or {}).items()
        }
    except (OSError, ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError) as e:
        raise ValueError(
            f"price table {source}: {e}; it maps machine types to "
            "{usd_per_hour: <USD>, vcpus: <count>} under `machines:` (see pipeline/reporting/prices.yaml)"
        ) from None
    return {"source": source, "examples": bool(doc.get("examples", False)), "machines": machines}


def basis(options) -> dict:
    """What a run's cost is worked out from, known when its graph is built: the machine type,
    the worker count and where each came from, and the price table (`price_table` option)."""
    from apache_beam.options.pipeline_options import StandardOptions, WorkerOptions

    prices = load_prices(options.get_all_options().get(PRICE_TABLE_OPTION))
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    if str(runner).rsplit(".", 1)[-1] != _DATAFLOW:
        return {"machine_type": LOCAL, "machine_type_from": f"{runner} on this machine",
                "workers": 1, "workers_from": "this machine", "prices": prices}  # fmt: skip
    worker = options.view_as(WorkerOptions)
    machine = worker.machine_type or DATAFLOW_DEFAULT_MACHINE
    if worker.num_workers:
        workers, workers_from = worker.num_workers, "--num_workers"
    elif worker.max_num_workers:
        workers = worker.max_num_workers
        workers_from = "--max_num_workers: an upper bound, autoscaling may have used fewer"
    else:
        workers = 1
        workers_from = (
            "neither --num_workers nor --max_num_workers given: 1 assumed, autoscaling may have used more"
        )
    return {
        "machine_type": machine,
        "machine_type_from": "--machine_type" if worker.machine_type else "Dataflow's default for batch jobs",
        "workers": int(workers),
        "workers_from": workers_from,
        "prices": prices,
    }


def this_machine_cpus() -> int:
    """The CPUs this process may run on (a container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def vcpus_from_name(machine_type: str) -> float | None:
    """n2-standard-8 -> 8, custom-4-16384 -> 4; None when the name does not say."""
    custom = re.search(r"custom-(\d+)-\d+", machine_type)
    if custom:
        return float(custom[1])
    found = re.search(r"-(\d+)$", machine_type)
    return float(found[1]) if found else None


def estimate(basis: dict, seconds: float | None, read: int, predictions: int | None, cpus_here: int) -> dict:
    """run.json's `cost`: the basis, then worker-seconds, vCPU-seconds, records per second
    (overall and per vCPU) and, with a price, the run's and a million predictions' cost."""
    machine = basis["machine_type"]
    prices = basis.get("prices") or {}
    row = (prices.get("machines") or {}).get(machine)
    if machine == LOCAL:
        vcpus, vcpus_from = float(cpus_here), "this machine's CPU count"
    elif row and row.get("vcpus"):
        vcpus, vcpus_from = row["vcpus"], "price table"
    else:
        vcpus, vcpus_from = vcpus_from_name(machine), "machine type's name"
    if vcpus is not None and vcpus == int(vcpus):
        vcpus = int(vcpus)
    workers = basis["workers"]
    seconds = seconds or 0.0
    worker_seconds = workers * seconds
    vcpu_seconds = worker_seconds * vcpus if vcpus else None
    usd = worker_seconds / 3600 * row["usd_per_hour"] if row else None
    found = {
        "machine_type": machine,
        "machine_type_from": basis["machine_type_from"],
        "workers": workers,
        "workers_from": basis["workers_from"],
        "vcpus_per_worker": vcpus,
        "vcpus_from": vcpus_from if vcpus else None,
        "worker_seconds": round(worker_seconds, 3),
        "vcpu_seconds": None if vcpu_seconds is None else round(vcpu_seconds, 3),
        "records_per_second": round(read / seconds, 1) if seconds else None,
        "records_per_second_per_vcpu": round(read / vcpu_seconds, 1) if vcpu_seconds else None,
        "usd_per_worker_hour": row["usd_per_hour"] if row else None,
        "usd": _significant(usd),
        "usd_per_million_predictions": _significant(usd / predictions * 1e6) if usd is not None and predictions else None,
        "price_table": prices.get("source"),
        "prices_are_examples": bool(prices.get("examples")),
    }  # fmt: skip
    if row is None:
        found["no_price"] = prices.get("missing") or f"no price for {machine} in {prices.get('source')}"
    return found


def _significant(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else float(f"{value:.{digits}g}")


def money(usd: float | None) -> str:
    """$ with three significant figures for small sums, cents for larger: "$0.0116", "$1.23"."""
    if usd is None:
        return "—"
    if usd == 0:
        return "$0.00"
    decimals = max(2, 2 - math.floor(math.log10(abs(usd))))
    return f"${usd:,.{decimals}f}"


def machines(cost: dict) -> str:
    """The machines of an estimate in a few words: "3 x n1-standard-4", "this machine"."""
    if cost.get("machine_type") == LOCAL:
        return "this machine"
    return f"{cost.get('workers')} x {cost.get('machine_type')}"


def assumptions(cost: dict) -> list[str]:
    """What an estimate assumed, in words, for the report."""
    machine, vcpus = cost.get("machine_type"), cost.get("vcpus_per_worker")
    busy = (
        "busy for the whole pipeline wall time, from the pipeline's start to its last step "
        "(start-up included, the command's own checks before it not)"
    )
    if machine == LOCAL:
        lines = [
            f"One machine, the one that ran the pipeline ({cost.get('machine_type_from')}), with "
            f"{vcpus if vcpus else 'an unknown number of'} vCPUs ({cost.get('vcpus_from')}), {busy}."
        ]
    else:
        lines = [
            f"{cost.get('workers')} worker{'s' if cost.get('workers') != 1 else ''} "
            f"({cost.get('workers_from')}) of machine type {machine} ({cost.get('machine_type_from')}), "
            f"{vcpus if vcpus else 'an unknown number of'} vCPUs each ({cost.get('vcpus_from') or 'not in the price table'}), "
            f"each {busy}."
        ]
    if cost.get("no_price"):
        lines.append(f"No price: {cost['no_price']}, so no cost in dollars.")
    else:
        kind = "example prices, not a quote" if cost.get("prices_are_examples") else "prices set by you"
        lines.append(
            f"{money(cost.get('usd_per_worker_hour'))} per {'hour' if machine == LOCAL else 'worker-hour'} "
            f"for {machine}, from the price table {cost.get('price_table')} ({kind}); disks, shuffle, "
            "GPUs, network and discounts are not included."
        )
    return lines
