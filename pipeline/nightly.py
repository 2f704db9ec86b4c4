"""`adpredict nightly`: score one date's ad records (or a range of dates), unattended.

    adpredict nightly --config nightly.yaml                  # yesterday, in the config's time zone
    adpredict nightly --config nightly.yaml --date 2026-11-26
    adpredict nightly --config nightly.yaml --backfill 2026-11-01 2026-11-26
    adpredict nightly --config nightly.yaml --force --runner DataflowRunner ...   # Beam flags pass through

The config file (YAML) holds what a crontab line should not: the model, and input and
output templates where `{date}` becomes YYYY-MM-DD and `{date_nodash}` YYYYMMDD:

    model_dir: gs://my-bucket/model
    input: gs://my-bucket/ads/dt={date}/*.jsonl       # or bq://p.d.t with input_filter
    output_dir: gs://my-bucket/predictions/dt={date}

Each run's data-quality gate compares the date's records with the model's training profile
and with the latest earlier night that published (within `drift_lookback_days`), and keeps a
gross shift from being published (exit 8; `accept_drift: true` or `--accept_drift` publishes
a reviewed night; limits in `quality_thresholds`, see docs/data_quality.md).

A date whose `_SUCCESS` exists with the same model and input fingerprints in its run.json
is skipped (`--force` re-runs it). A crashed run's half-written outputs are cleared before
its date is scored again, so predictions are never duplicated or mixed. With
`transform_dir`, a parity gate compares the model's in-graph transform with the transform
artifacts on a sample of the date's records before scoring.

With `on_success` / `on_failure` (shell commands), each date's run ends by running one, with
ADPREDICT_DATE, ADPREDICT_STATUS, ADPREDICT_EXIT_CODE, ADPREDICT_RUN_JSON and
ADPREDICT_OUTPUT_DIR in its environment: a team's own alert (mail, chat, pager). A hook that
fails is reported, not fatal.
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
import time
import zoneinfo

import yaml

from pipeline.entrypoint import (
    VERBOSE_HELP,
    CommandParser,
    beam_help,
    error_line,
    print_pipeline_summary,
    run_reporting_errors,
)
from pipeline.options import (
    HELP_BEAM,
    CachedViewOptions,
    OptionsError,
    PredictOptions,
    check_argv,
    check_flags,
    declared_flags,
    register_runner_options,
)
from pipeline.run_contract import (
    DEFAULT_MAX_ERROR_RATE,
    EXIT_CODES,
    EXIT_OK,
    EXIT_SKIPPED,
    EXIT_USAGE,
    RUN_MANIFEST,
    SUCCESS_EXIT_CODES,
    SUCCESS_MARKER,
    RunFailed,
    exit_code_table,
)
from pipeline.startup import VERBOSE_FLAG, command, freeze_imported_objects

EXIT_NAMES = {e.code: e.name for e in EXIT_CODES}  # ADPREDICT_STATUS of a hook


class ConfigError(ValueError):
    """The nightly config file is wrong; the message names the file and the key."""


@dataclasses.dataclass(frozen=True)
class NightlyConfig:
    model_dir: str
    output_dir: str
    input: tuple[str, ...] = ()
    input_query: str | None = None
    input_filter: str | None = None
    query_dataset: str | None = None
    input_format: str | None = None
    output_format: str = "jsonl"
    output_table: str | None = None
    passthrough_fields: str | None = None
    input_schema: str | None = None  # for a model without adpredict_model.json
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE
    timezone: str = "UTC"
    transform_dir: str | None = None  # with it, the parity gate runs first
    parity_sample: int = 256
    parity_tolerance: float = 1e-5
    on_success: str | None = None  # a shell command run after a date scored (see the module doc)
    on_failure: str | None = None  # ... after a date failed, whatever failed
    hook_timeout: float = 300.0  # seconds a hook may take before it is stopped and reported
    # The data-quality gate (docs/data_quality.md): limits by check or feature ("WARN:BLOCK"),
    # whether blocked nights publish anyway, and how far back the previous night is looked for.
    quality_thresholds: dict = dataclasses.field(default_factory=dict)
    accept_drift: bool = False
    drift_lookback_days: int = 7
    precision: str | None = None  # --precision of every run (fp32 | bf16 | auto; docs/precision.md)
    gpu: str | None = None  # --gpu of every run (auto | require | warn)
    pipeline_args: tuple[str, ...] = ()  # Beam flags for every run, e.g. [--runner, DataflowRunner]


_TEMPLATED = ("model_dir", "output_dir", "input", "input_query", "input_filter", "output_table")


def load_config(path: str) -> NightlyConfig:
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"nightly config {path!r} does not exist; check --config") from None
    except yaml.YAMLError as e:
        from transforms.schema import yaml_problem

        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(e)}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    known = {f.name for f in dataclasses.fields(NightlyConfig)}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}; known keys are {sorted(known)}")
    for required in ("model_dir", "output_dir"):
        if not doc.get(required):
            raise ConfigError(f"{path}: {required!r} is required")
    if not doc.get("input") and not doc.get("input_query"):
        raise ConfigError(f"{path}: give 'input' (file pattern or bq:// table) or 'input_query'")
    if "{date" not in str(doc["output_dir"]) and not doc.get("output_table"):
        raise ConfigError(f"{path}: output_dir must contain {{date}}, or each night would replace the last")
    for key in ("input", "pipeline_args"):
        if isinstance(doc.get(key), str):
            doc[key] = [doc[key]]
        if key in doc:
            doc[key] = tuple(str(v) for v in doc[key])
    _check_quality_keys(path, doc)
    try:
        zoneinfo.ZoneInfo(doc.get("timezone", "UTC"))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{path}: unknown timezone {doc.get('timezone')!r} (e.g. Europe/Berlin)") from None
    return NightlyConfig(**doc)


def _check_quality_keys(path: str, doc: dict) -> None:
    from pipeline.quality.thresholds import parse_policy

    thresholds = doc.get("quality_thresholds") or {}
    if not isinstance(thresholds, dict):
        raise ConfigError(f'{path}: quality_thresholds must be a mapping, e.g. {{distance: "0.1:0.3"}}')
    for name, value in thresholds.items():
        if not isinstance(value, str):  # YAML reads 1:2 unquoted as a number (62)
            raise ConfigError(
                f'{path}: quality_thresholds: {name}: write "WARN:BLOCK" in quotes, e.g. {name}: "0.1:0.3" '
                f"(YAML read {value!r})"
            )
    try:
        parse_policy(thresholds, where=f"{path}: quality_thresholds")
    except OptionsError as e:
        raise ConfigError(str(e)) from None
    doc["quality_thresholds"] = {str(k): v for k, v in thresholds.items()}
    if not isinstance(doc.get("accept_drift", False), bool):
        raise ConfigError(f"{path}: accept_drift must be true or false")
    lookback = doc.get("drift_lookback_days", 7)
    if not isinstance(lookback, int) or isinstance(lookback, bool) or lookback < 0:
        raise ConfigError(
            f"{path}: drift_lookback_days must be a whole number of days >= 0, got {lookback!r}"
        )


def render(template: str | None, date: datetime.date) -> str | None:
    if template is None:
        return None
    return template.replace("{date}", date.isoformat()).replace("{date_nodash}", date.strftime("%Y%m%d"))


def yesterday(timezone: str) -> datetime.date:
    return datetime.datetime.now(zoneinfo.ZoneInfo(timezone)).date() - datetime.timedelta(days=1)


def predict_argv(config: NightlyConfig, date: datetime.date, extra: list[str]) -> list[str]:
    """The `predict` flags of one date's run."""
    argv = ["--model_dir", render(config.model_dir, date), "--output_dir", render(config.output_dir, date)]
    for pattern in config.input:
        argv += ["--input", render(pattern, date)]
    optional = {
        "input_query": render(config.input_query, date),
        "input_filter": render(config.input_filter, date),
        "query_dataset": config.query_dataset,
        "input_format": config.input_format,
        "output_table": render(config.output_table, date),
        "passthrough_fields": config.passthrough_fields,
        "input_schema": config.input_schema,
        "precision": config.precision,
        "gpu": config.gpu,
    }
    argv += [arg for name, value in optional.items() if value for arg in (f"--{name}", value)]
    argv += ["--output_format", config.output_format, "--max_error_rate", str(config.max_error_rate)]
    for name, limits in config.quality_thresholds.items():
        argv += ["--quality_threshold", f"{name}={limits}"]
    if config.accept_drift:
        argv.append("--accept_drift")
    given = any(arg == "--drift_baseline" or arg.startswith("--drift_baseline=") for arg in extra)
    baseline = None if given else previous_night_dir(config, date, [*config.pipeline_args, *extra])
    if baseline:
        argv += ["--drift_baseline", baseline]
    return [*argv, "--run_date", date.isoformat(), *config.pipeline_args, *extra]


def previous_night_dir(config: NightlyConfig, date: datetime.date, beam_flags=()) -> str | None:
    """The output directory of the latest night before `date` (within drift_lookback_days)
    that published its predictions (_SUCCESS): what tonight's drift is measured against.
    A blocked or failed night is skipped, so one bad night does not become the baseline.

    Looked for with the run's Beam flags (an S3 endpoint, Azure credentials), after the
    output store is checked: a store that does not answer is one line now, not minutes of
    Beam's retries per earlier night."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    if "{date" not in config.output_dir:
        return None  # one output directory (BigQuery tables) for every date: no night to find
    from pipeline.io import stores
    from pipeline.run.manifest import read_manifest

    options = PipelineOptions(list(beam_flags))
    stores.use_run_options(options)
    stores.check_store(render(config.output_dir, date), options, "output_dir")

    for days in range(1, config.drift_lookback_days + 1):
        output_dir = render(config.output_dir, date - datetime.timedelta(days=days))
        try:
            published = FileSystems.exists(FileSystems.join(output_dir, SUCCESS_MARKER))
            if published and read_manifest(output_dir).get("quality", {}).get("profile"):
                return output_dir  # (a night run with the gate off has no profile: look further)
        except Exception:  # noqa: BLE001 - an unreachable night is one not found; the run says so
            return None
    return None


def already_done(plan) -> str | None:
    """Why this date needs no run (its _SUCCESS, same model and inputs), or None."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline.run.manifest import read_manifest

    output_dir, info = plan.output_dir, plan.run.info
    if not FileSystems.exists(FileSystems.join(output_dir, SUCCESS_MARKER)):
        return None
    manifest = read_manifest(output_dir)
    if manifest.get("model", {}).get("fingerprint") != info["model"]["fingerprint"]:
        return None
    if manifest.get("input_fingerprint") != info["input_fingerprint"]:
        return None
    return f"{output_dir} has {SUCCESS_MARKER} from a run with the same model and inputs"


def parity_gate(config: NightlyConfig, plan) -> dict:
    """Compares the model's transform with config.transform_dir's on the date's records, read
    as the date's run reads them (its model description, layout and input format)."""
    from pipeline import parity

    if plan.offline:
        raise parity.ParityError(
            "a dry run reads no records, so the parity gate cannot run; run without --dry_run"
        )
    files = [f for f in plan.run.info["inputs"]["files"] if isinstance(f, str)]
    if not files:
        raise parity.ParityError(
            "the parity gate samples files; these inputs are BigQuery only: remove transform_dir from the "
            "nightly config to score them without the gate"
        )
    batch = parity.sample_records(files, plan.model.layout, config.parity_sample, plan.inputs.input_format)
    return parity.compare(plan.model, config.transform_dir, batch, config.parity_tolerance)


def gate(config: NightlyConfig, date: datetime.date, plan) -> int:
    """Runs the parity gate for one date; returns EXIT_OK when it passes."""
    from pipeline.parity import ParityError

    try:
        differences = parity_gate(config, plan)
    except ParityError as e:
        print(f"adpredict nightly {date}: failed: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    print(f"adpredict nightly {date}: parity gate passed (largest difference "
          f"{max(differences.values()):.3g})", flush=True)  # fmt: skip
    return EXIT_OK


def run_date(
    config: NightlyConfig, date: datetime.date, force: bool = False, extra=(), parity_only=False, ran=None
) -> int:
    """Scores one date (or, with `parity_only`, only runs its parity gate); returns its exit code.

    The date's flags are parsed, and its model and inputs checked and fingerprinted, once:
    the skip test, the parity gate and the run share that plan."""
    from pipeline import predict

    if parity_only and not config.transform_dir:
        raise ConfigError("--parity_only needs transform_dir in the nightly config")
    freeze_imported_objects()
    plan = predict.plan(CachedViewOptions(predict_argv(config, date, list(extra))))
    if ran is not None:  # for the date's hook: which run.json is this run's
        ran.update(output_dir=plan.output_dir, run_id=plan.run.info["run_id"])
    if parity_only:
        return gate(config, date, plan)
    if not force:
        reason = already_done(plan)
        if reason:
            print(f"adpredict nightly {date}: skipped: {reason}", flush=True)
            return EXIT_SKIPPED
    if config.transform_dir:
        gated = gate(config, date, plan)
        if gated != EXIT_OK:
            return gated
    started, prog = time.monotonic(), f"adpredict nightly {date}"
    try:
        manifest = predict.execute(plan)
    except RunFailed as e:  # the run said so in run.json
        print_pipeline_summary(prog, e.manifest, time.monotonic() - started)
        print(f"adpredict nightly {date}: failed: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    print_pipeline_summary(prog, manifest, time.monotonic() - started)
    return EXIT_OK


def night(config: NightlyConfig, date: datetime.date, args, extra) -> int:
    """One date: its run (or parity gate), the one line of a failure, then its hook."""
    ran: dict = {}
    codes = []
    try:
        code = run_reporting_errors(
            lambda _: codes.append(run_date(config, date, args.force, extra, args.parity_only, ran)),
            None,
            prog=f"{PROG} {date}",
        )
    except ConfigError as e:
        print(error_line(PROG, e), file=sys.stderr, flush=True)
        code = EXIT_USAGE
    code = code or (codes[0] if codes else EXIT_OK)
    if not args.parity_only:
        run_hook(config, date, code, ran)
    return code


def run_hook(config: NightlyConfig, date: datetime.date, code: int, ran: dict) -> None:
    """Runs `on_success` (the date scored) or `on_failure` (anything else but a skip) with the
    run's date, status, exit code and run.json in its environment; a hook that fails or
    hangs is reported on stderr, and the night's exit code stays the run's."""
    import os
    import subprocess

    from pipeline.run.manifest import manifest_of_run

    hook = {EXIT_OK: config.on_success, EXIT_SKIPPED: None}.get(code, config.on_failure)
    if not hook:
        return
    output_dir = ran.get("output_dir") or render(config.output_dir, date)
    wrote = ran.get("run_id") and manifest_of_run(output_dir, ran["run_id"])
    env = {
        **os.environ,
        "ADPREDICT_DATE": date.isoformat(),
        "ADPREDICT_STATUS": EXIT_NAMES.get(code, str(code)),
        "ADPREDICT_EXIT_CODE": str(code),
        "ADPREDICT_OUTPUT_DIR": output_dir,
        "ADPREDICT_RUN_JSON": f"{output_dir.rstrip('/')}/{RUN_MANIFEST}" if wrote else "",
    }
    which = "on_success" if code == EXIT_OK else "on_failure"
    try:
        done = subprocess.run(hook, shell=True, env=env, timeout=config.hook_timeout, check=False)
    except subprocess.TimeoutExpired:
        problem = f"did not end within hook_timeout {config.hook_timeout:g} s and was stopped"
    except OSError as e:
        problem = f"could not be started: {e}"
    else:
        problem = f"exited {done.returncode}" if done.returncode else None
    if problem:
        print(
            f"adpredict nightly {date}: warning: the {which} hook {problem}: {hook}",
            file=sys.stderr,
            flush=True,
        )


def dates(start: datetime.date, end: datetime.date) -> list[datetime.date]:
    if end < start:
        raise ConfigError(f"--backfill: {end} is before {start}; give START first: --backfill {end} {start}")
    return [start + datetime.timedelta(days=n) for n in range((end - start).days + 1)]


def main(argv=None) -> int:
    """`adpredict nightly ...`; flags that are not nightly's go to every predict run (Beam options)."""
    with command(sys.argv[1:] if argv is None else list(argv)) as argv:
        return _main(argv)


PROG = "adpredict nightly"
EXIT_CODES_HELP = (
    "exit codes (a scheduler retries only those that say 'retry later'; hooks: see docs/nightly.md):\n"
    + exit_code_table()
)
PASSED_ON_HELP = f"""flags passed to every date's predict run:
  Any other flag of `adpredict predict` (see its --help) or of Beam and
  Dataflow ({HELP_BEAM}), e.g. --runner DataflowRunner --project P, goes to
  each date's predict run after the config's settings and pipeline_args, so a
  flag that takes one value wins over the config's. The config gives each
  date its --model_dir, --input, --output_dir and --run_date, and, unless
  given, --drift_baseline: the latest earlier night that published. A flag
  neither nightly nor predict declares is refused."""


def _parser():
    parser = CommandParser(
        prog=PROG,
        usage="%(prog)s --config FILE [--date DATE | --backfill START END] ...",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(["examples:\n" + __doc__.split("\n\n")[1], PASSED_ON_HELP, EXIT_CODES_HELP]),
        add_help=False,
    )
    what, when, gates, run = (parser.add_argument_group(t) for t in ("config", "dates", "gates", "run"))
    what.add_argument(
        "--config", required=True, metavar="FILE", help="Nightly config file (YAML); see docs/nightly.md."
    )
    one = when.add_mutually_exclusive_group()
    one.add_argument("--date", type=datetime.date.fromisoformat,
                     help="YYYY-MM-DD; default: yesterday, in the config's time zone.")  # fmt: skip
    one.add_argument("--backfill", nargs=2, type=datetime.date.fromisoformat, metavar=("START", "END"),
                     help="Every date from START to END, in order, skipping those already done.")  # fmt: skip
    when.add_argument("--force", action="store_true", help="Re-run dates that are already done.")
    gates.add_argument(
        "--accept_drift",
        action="store_true",
        help="Publish a date the data-quality gate blocked, after a person reviewed its report.html "
        "(passed to predict; the verdict is recorded as accepted).",
    )
    gates.add_argument(
        "--parity_only",
        action="store_true",
        help=f"Only run the parity gate (exit {EXIT_OK} when it passes; needs transform_dir).",
    )
    run.add_argument(VERBOSE_FLAG, action="store_true", help=VERBOSE_HELP)
    run.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    run.add_argument(HELP_BEAM, action="store_true", help="List Beam's and Dataflow's flags and exit.")
    return parser


def _main(argv: list[str]) -> int:
    if HELP_BEAM in argv:
        print(beam_help(PROG), end="")
        return EXIT_OK
    parser = _parser()
    register_runner_options(argv)  # --runner DaskRunner: its --dask_* flags
    predict_flags = declared_flags([PredictOptions])
    try:  # each flag is nightly's or predict's (Beam's included): a typo is refused, not passed on
        check_argv(argv, {**predict_flags, **parser._option_string_actions})
        args, extra = parser.parse_known_args(argv)
        check_flags(extra, [PredictOptions])  # a value predict's flag does not take: one line now
    except OptionsError as e:
        print(error_line(PROG, e), file=sys.stderr)
        return EXIT_USAGE
    if args.accept_drift:  # predict's flag, listed in nightly's --help
        extra = [*extra, "--accept_drift"]
    try:
        config = load_config(args.config)
        try:
            if any("dask" in str(arg).lower() for arg in config.pipeline_args):
                register_runner_options(config.pipeline_args)
                predict_flags = declared_flags([PredictOptions])
            check_argv(config.pipeline_args, predict_flags)
        except OptionsError as e:
            raise ConfigError(f"{args.config}: pipeline_args: {e}") from None
        todo = dates(*args.backfill) if args.backfill else [args.date or yesterday(config.timezone)]
    except ConfigError as e:
        print(error_line(PROG, e), file=sys.stderr)
        return EXIT_USAGE
    codes = []
    for date in todo:
        codes.append(night(config, date, args, extra))
        if codes[-1] not in SUCCESS_EXIT_CODES:
            print(f"adpredict nightly: stopped at {date}; later dates were not run", file=sys.stderr)
            break
    if all(c == EXIT_SKIPPED for c in codes):
        return EXIT_SKIPPED
    return next((c for c in codes if c not in SUCCESS_EXIT_CODES), EXIT_OK)


if __name__ == "__main__":
    sys.exit(main())
