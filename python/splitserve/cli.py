"""The `splitserve` command: the only place that reads argv. (Users read `DESCRIPTION` in --help.)

This module is the parser and the dispatch; each command runs in a module of the face beside it:
`cli_serve` (serve), `cli_stats` (stats, weights), `cli_experiment` (experiment), `cli_evaluate`
(evaluate, replay), with the options' argument types in `cli_args`.

splitserve serve [--host H] [--port N] [--state-dir DIR] [--model-store DIR] [--images FILE]
                 [--max-batch-rows N] [--auth FILE [--auth-data-plane]] [--invocation-timeout S]
                 [--health-check-interval S] [--body-read-timeout S] [--header-read-timeout S]
                 [--max-connections N] [--max-inflight-body-bytes N] [--worker-user NAME]
                 [--allow-artifact-path DIR]... [--max-artifact-bytes N] [--max-artifact-files N]
                 [--max-instances-per-variant N] [--max-vcpu-overcommit X]
                 [--metrics-retention DAYS] [--metrics-created] [--state URL]
                 [--experiment-metric accuracy|precision|recall|f1|auc|log_loss]
                 [--no-feedback-index]
                 [--log-level LEVEL] [--log-format text|json] [--access-log [FILE|-]]
splitserve stats ENDPOINT [--since 15m] [--per 1m] [--errors] [--latency] [--json] [--url URL]
splitserve weights ENDPOINT [--json] [--url URL]
splitserve experiment ENDPOINT [--json] [--watch [SECONDS]] [--url URL]
splitserve evaluate --capture DIR --ground-truth PATH [--endpoint E] [--threshold 0.5] [--json]
                    [--plot FILE.png] [--weights Variant1=1,Variant2=1 | --url URL]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from splitserve.cli_args import (
    absolute_path,
    http_url,
    log_level,
    parse_duration,
    positive_count,
    positive_factor,
    positive_seconds,
    process_count,
    retention_days,
    state_url,
    type_resource,
)
from splitserve.cli_evaluate import run_evaluate, run_replay
from splitserve.cli_experiment import run_experiment
from splitserve.cli_serve import serve, settings_from_args
from splitserve.cli_stats import format_duration, run_stats, run_weights
from splitserve.config import LOG_FORMATS, PLACEMENTS, EvaluationSettings, ReplaySettings, Settings
from splitserve.evaluation.sequential import METRICS as EXPERIMENT_METRICS

# Names other modules and the tests import from `cli`: the parser, its argument types and the
# serve command live beside it (cli_args, cli_serve) since issue 12's split.
__all__ = [
    "DESCRIPTION",
    "build_parser",
    "main",
    "parse_duration",
    "positive_count",
    "positive_factor",
    "positive_seconds",
    "process_count",
    "serve",
    "settings_from_args",
]

_DEFAULTS = Settings()


#: What `splitserve --help` says first: what the command is for, to its users.
DESCRIPTION = (
    "A SageMaker-compatible A/B inference gateway on one machine. `splitserve serve` answers "
    "SageMaker's control plane (CreateModel, CreateEndpointConfig, CreateEndpoint, "
    "UpdateEndpointWeightsAndCapacities, ...) and InvokeEndpoint on one port, so unmodified boto3 "
    "and the SageMaker SDK work against it with endpoint_url; `stats`, `weights` and `experiment` "
    "read a running gateway; `evaluate` compares the variants from data capture and ground truth; "
    "`replay` sends captured requests to a candidate variant."
)
SERVE_DESCRIPTION = (
    "Run the gateway: SageMaker's control plane (POST /), InvokeEndpoint "
    "(POST /endpoints/NAME/invocations), CloudWatch's API and Prometheus's /metrics, on one port. "
    "State (endpoints, weight history, metrics) is kept in --state-dir; s3://bucket/key URLs "
    "resolve under --model-store."
)
EPILOG = "See README.md for a quick start; `splitserve COMMAND --help` for each command's options."


def _version() -> str:
    """The installed package's version (read from its metadata, so --version loads nothing)."""
    try:
        return importlib.metadata.version("splitserve")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand; defaults come from `Settings`."""
    parser = argparse.ArgumentParser(prog="splitserve", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="run the gateway (both planes and /metrics)", description=SERVE_DESCRIPTION
    )
    serve.add_argument(
        "--host",
        default=_DEFAULTS.host,
        help="the address to listen on; one other than loopback needs --auth or --insecure "
        "(default %(default)s)",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=_DEFAULTS.port,
        help="the port to listen on (default %(default)s)",
    )
    serve.add_argument(
        "--state-dir",
        type=Path,
        default=_DEFAULTS.state_dir,
        metavar="DIR",
        help="where the gateway keeps its state: SQLite store, worker logs (default %(default)s)",
    )
    serve.add_argument(
        "--model-store",
        type=Path,
        default=None,
        metavar="DIR",
        help="root that s3://bucket/key URLs resolve under (default: STATE_DIR/models)",
    )
    serve.add_argument(
        "--state",
        type=state_url,
        default=None,
        metavar="URL",
        help=(
            "the state database: sqlite:///absolute/path or postgresql://user@host:port/db "
            "(default: the SQLite file in --state-dir, which still holds models, runs and logs)"
        ),
    )
    serve.add_argument(
        "--images",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML file mapping bring-your-own image names to the command that serves them "
        "(see README, Bring your own image; default: the built-in XGBoost image only)",
    )
    serve.add_argument(
        "--allow-pickle",
        action="store_true",
        help="let workers load pickled models (unpickling runs code from the artifact)",
    )
    serve.add_argument(
        "--worker-tcp", action="store_true", help="built-in workers listen on loopback TCP"
    )
    serve.add_argument(
        "--max-batch-rows",
        type=positive_count,
        default=_DEFAULTS.workers.max_batch_rows,
        metavar="N",
        help="dynamic batching in the built-in workers: the most rows one predict call "
        "coalesces; 1 turns batching off (default %(default)s)",
    )
    serve.add_argument(
        "--pipeline-depth",
        type=positive_count,
        default=_DEFAULTS.workers.pipeline_depth,
        metavar="N",
        help="HTTP/1.1 pipelining to the built-in workers: the most requests sent on one "
        "connection before the first is answered; 1 turns it off (default %(default)s)",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening on a non-loopback address with no authentication",
    )
    serve.add_argument(
        "--auth",
        type=Path,
        default=_DEFAULTS.auth.keys_file,
        metavar="FILE",
        help="require AWS Signature V4 on the control plane, with the access keys in FILE "
        "(TOML, mode 600; see README, Security)",
    )
    serve.add_argument(
        "--auth-data-plane",
        action="store_true",
        default=_DEFAULTS.auth.data_plane,
        help="require signatures on InvokeEndpoint too (needs --auth)",
    )
    serve.add_argument(
        "--invocation-timeout",
        type=positive_seconds,
        default=_DEFAULTS.workers.invocation_timeout_seconds,
        metavar="SECONDS",
        help="a worker must answer an invocation within this, else ModelError "
        "(default %(default)g, the container contract's limit)",
    )
    serve.add_argument(
        "--health-check-interval",
        type=positive_seconds,
        default=_DEFAULTS.workers.health_interval_seconds,
        metavar="SECONDS",
        help="time between /ping health checks of each instance (default %(default)g)",
    )
    serve.add_argument(
        "--body-read-timeout",
        type=positive_seconds,
        default=_DEFAULTS.body_read_timeout_seconds,
        metavar="SECONDS",
        help="an InvokeEndpoint body must arrive within this, else 408 (default %(default)g)",
    )
    serve.add_argument(
        "--header-read-timeout",
        type=positive_seconds,
        default=_DEFAULTS.edge.header_read_timeout_seconds,
        metavar="SECONDS",
        help="a request's line and headers must arrive within this, else the connection is "
        "closed (default %(default)g)",
    )
    serve.add_argument(
        "--max-connections",
        type=positive_count,
        default=_DEFAULTS.edge.max_connections,
        metavar="N",
        help="client connections open at once; at the cap idle ones are closed first "
        "(default: from the file descriptor limit, see README)",
    )
    serve.add_argument(
        "--max-inflight-body-bytes",
        type=positive_count,
        default=_DEFAULTS.edge.max_inflight_body_bytes,
        metavar="N",
        help="request-body bytes held at once; beyond it 503 with Retry-After (default: "
        f"1/{1 / _DEFAULTS.edge.inflight_body_memory_fraction:g} of memory, at most "
        f"{_DEFAULTS.edge.inflight_body_bytes_cap / 2**30:g} GiB)",
    )
    serve.add_argument(
        "--worker-user",
        default=_DEFAULTS.workers.worker_user,
        metavar="NAME",
        help="when the gateway runs as root, workers run as this unprivileged account "
        "(default %(default)s; see README, Security)",
    )
    serve.add_argument(
        "--allow-artifact-path",
        type=Path,
        action="append",
        default=list(_DEFAULTS.allowed_artifact_paths),
        metavar="DIR",
        help="let file:// and absolute ModelDataUrl locations name artifacts under DIR "
        "(repeatable; by default only the model store is allowed)",
    )
    serve.add_argument(
        "--max-artifact-bytes",
        type=positive_count,
        default=_DEFAULTS.workers.max_artifact_bytes,
        metavar="N",
        help="the most bytes a model artifact may unpack to (default %(default)s)",
    )
    serve.add_argument(
        "--max-artifact-files",
        type=positive_count,
        default=_DEFAULTS.workers.max_artifact_files,
        metavar="N",
        help="the most files and directories a model artifact may unpack to (default %(default)s)",
    )
    serve.add_argument(
        "--max-instances-per-variant",
        type=positive_count,
        default=_DEFAULTS.control.max_instances_per_variant,
        metavar="N",
        help="the most instances one variant may run; more is ResourceLimitExceeded "
        "(default %(default)s)",
    )
    serve.add_argument(
        "--max-vcpu-overcommit",
        type=positive_factor,
        default=_DEFAULTS.control.max_vcpu_overcommit,
        metavar="X",
        help="one endpoint's instances may have at most X times the host's CPUs in vCPUs "
        "(each counting at most the host's CPUs); more is ResourceLimitExceeded "
        "(default %(default)g)",
    )
    serve.add_argument(
        "--metrics-retention",
        type=retention_days,
        default=_DEFAULTS.cloudwatch.retention_days,
        metavar="DAYS",
        help="how many days of per-minute figures CloudWatch's API keeps in the state directory "
        "(default %(default)s, as CloudWatch keeps one-minute data)",
    )
    serve.add_argument(
        "--experiment-metric",
        choices=EXPERIMENT_METRICS,
        default=_DEFAULTS.feedback.metric,
        help="the metric the live experiments declare winners on, from the labels sent to "
        "POST /splitserve/feedback/ENDPOINT (default %(default)s; README, 'Closing the loop')",
    )
    serve.add_argument(
        "--no-feedback-index",
        dest="feedback_index",
        action="store_false",
        help="keep no inference-id index of answered invocations: labels sent for them are "
        "refused as unknown, and each request costs the gateway about 8 %% fewer instructions "
        "(README, 'Closing the loop'; by default every answered invocation is indexed)",
    )
    serve.add_argument(
        "--metrics-created",
        action="store_true",
        default=_DEFAULTS.metrics_created,
        help="/metrics also shows each counter's and histogram's _created series (creation "
        "timestamps; left out by default)",
    )
    serve.add_argument(
        "--processes",
        type=process_count,
        default=_DEFAULTS.replicas.processes,
        metavar="N",
        help="run N gateway replica processes sharing the port, over one state (README, Running "
        "several replicas); auto: the usable CPUs less half of them, which are left to the "
        "instances (default %(default)s)",
    )
    serve.add_argument(
        "--advertise-address",
        default=_DEFAULTS.replicas.advertise_address,
        metavar="ADDRESS",
        help="the address other replicas reach this one at (its internal listener binds it; "
        "default %(default)s, for replicas on one host)",
    )
    serve.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default=_DEFAULTS.placement.backend,
        help="where instances run: child processes of the gateway, or detached actors on a Ray "
        "cluster, which outlive any gateway (README, Running on a cluster; default "
        "%(default)s)",
    )
    serve.add_argument(
        "--ray-address",
        default=_DEFAULTS.placement.ray_address,
        metavar="ADDRESS",
        help="with --placement ray: the cluster's head, HOST:PORT, or auto (default %(default)s)",
    )
    serve.add_argument(
        "--ray-namespace",
        default=_DEFAULTS.placement.ray_namespace,
        metavar="NAME",
        help="with --placement ray: the Ray namespace the instance actors are named in; "
        "gateways sharing a state use the same one (default %(default)s)",
    )
    serve.add_argument(
        "--ray-type-resource",
        action="append",
        default=[],
        type=type_resource,
        metavar="PATTERN=RESOURCE",
        help="with --placement ray: instances of the types matching PATTERN (e.g. 'ml.c5.*') "
        "also ask for a little of the custom resource RESOURCE, so they run only on nodes "
        "declaring it (repeatable; the first match wins)",
    )
    serve.add_argument(
        "--s3-endpoint-url",
        default=_DEFAULTS.placement.s3_endpoint_url,
        type=http_url,
        metavar="URL",
        help="with --placement ray: each node fetches s3://bucket/key model data from this "
        "S3-compatible store itself, with boto3 and the credentials boto3 finds there, instead "
        "of the gateway shipping it from --model-store (README, Running on a cluster)",
    )
    serve.add_argument(
        "--ray-node-dir",
        default=_DEFAULTS.placement.node_model_dir,
        type=absolute_path,
        metavar="DIR",
        help="with --placement ray: the directory on each node for unpacked models, the "
        "servers' private directories and the host's book of pinned CPUs (default: "
        "splitserve-ray in the node's temporary directory)",
    )
    # Set by `serve --processes N` on the replicas it starts, never by hand.
    serve.add_argument("--supervisor-pid", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--replica-index", type=int, default=0, help=argparse.SUPPRESS)
    serve.add_argument(
        "--log-level",
        default=_DEFAULTS.logs.level,
        type=log_level,
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING or ERROR (default %(default)s)",
    )
    serve.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=_DEFAULTS.logs.format,
        help="text lines, or one JSON object a line (time, level, logger, message, request_id) "
        "for log shippers (default %(default)s)",
    )
    serve.add_argument(
        "--access-log",
        nargs="?",
        const="-",
        default=_DEFAULTS.logs.access_log,
        metavar="FILE",
        help="log a line per request (client, method, path, status, bytes, seconds, request id) "
        "to FILE, or to the log's stream with - or no FILE (default: no access log)",
    )
    _add_stats_command(commands)
    _add_weights_command(commands)
    _add_experiment_command(commands)
    _add_evaluate_command(commands)
    _add_replay_command(commands)
    return parser


def _add_stats_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    defaults = _DEFAULTS.stats
    stats = commands.add_parser(
        "stats",
        help="per-minute invocations of each variant of an endpoint, from a running gateway",
        description="One row per period, one column per variant: invocation counts (blank where "
        "none), and with --errors and --latency the error counts and p50/p99 model latency.",
    )
    stats.add_argument("endpoint", metavar="ENDPOINT", help="the endpoint's name")
    stats.add_argument(
        "--since",
        type=parse_duration,
        default=defaults.default_since_seconds,
        metavar="DURATION",
        help="how far back: 90s, 15m, 2h, 1d "
        f"(default {format_duration(defaults.default_since_seconds)})",
    )
    stats.add_argument(
        "--per",
        type=parse_duration,
        default=defaults.default_period_seconds,
        metavar="DURATION",
        help="the length of a row, whole minutes "
        f"(default {format_duration(defaults.default_period_seconds)})",
    )
    stats.add_argument("--errors", action="store_true", help="add 4xx, 5xx and model errors")
    stats.add_argument("--latency", action="store_true", help="add p50 and p99 model latency")
    stats.add_argument("--json", action="store_true", help="print the gateway's JSON report")
    stats.add_argument(
        "--url",
        default=f"http://{_DEFAULTS.host}:{_DEFAULTS.port}",
        help="the gateway (default %(default)s)",
    )
    stats.set_defaults(log_level="WARNING")


def _add_weights_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    weights = commands.add_parser(
        "weights",
        help="an endpoint's weight changes (time, cause, weights), from a running gateway",
        description="One row per change of the weights the endpoint's router was given, oldest "
        "first: when, what caused it (CreateEndpoint, UpdateEndpoint, "
        "UpdateEndpointWeightsAndCapacities, RollBack, GatewayRestart) and each variant's weight "
        "and share. `splitserve evaluate --url` checks the split against these.",
    )
    weights.add_argument("endpoint", metavar="ENDPOINT", help="the endpoint's name")
    weights.add_argument("--json", action="store_true", help="print the gateway's JSON answer")
    weights.add_argument(
        "--url",
        default=f"http://{_DEFAULTS.host}:{_DEFAULTS.port}",
        help="the gateway (default %(default)s)",
    )
    weights.set_defaults(log_level="WARNING")


def _add_experiment_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    experiment = commands.add_parser(
        "experiment",
        help="an endpoint's live experiment (labels sent as feedback), from a running gateway",
        description="Each variant's accuracy, precision, recall, F1, AUC and log loss over the "
        "labels joined so far, with always-valid intervals (valid however often you look), the "
        "differences between variants, the winner once declared, and the live split check. "
        "Labels come from POST /splitserve/feedback/ENDPOINT (README, 'Closing the loop').",
    )
    experiment.add_argument("endpoint", metavar="ENDPOINT", help="the endpoint's name")
    experiment.add_argument("--json", action="store_true", help="print the gateway's JSON view")
    experiment.add_argument(
        "--watch",
        nargs="?",
        type=positive_seconds,
        const=_DEFAULTS.feedback.watch_seconds,
        default=None,
        metavar="SECONDS",
        help="redraw every SECONDS (default %(const)s) until interrupted",
    )
    experiment.add_argument(
        "--url",
        default=f"http://{_DEFAULTS.host}:{_DEFAULTS.port}",
        help="the gateway (default %(default)s)",
    )
    experiment.set_defaults(log_level="WARNING")


def _add_evaluate_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    defaults = EvaluationSettings()
    evaluate = commands.add_parser(
        "evaluate",
        help="per-variant accuracy, precision, recall, F1, AUC and log loss from data capture "
        "and ground truth, with intervals, tests and the traffic a decision needs",
        description="Joins captured requests (SageMaker's capture format) with ground truth "
        "(SageMaker's merge format, or CSV inference_id,label) and compares the variants.",
    )
    evaluate.add_argument(
        "--capture",
        type=Path,
        required=True,
        metavar="DIR",
        help="the capture destination (DestinationS3Uri's directory) or one endpoint's directory",
    )
    evaluate.add_argument(
        "--ground-truth",
        type=Path,
        metavar="PATH",
        help="a file or a directory (required unless --shadow)",
    )
    evaluate.add_argument("--endpoint", help="the endpoint (needed when DIR holds several)")
    evaluate.add_argument(
        "--threshold",
        type=float,
        default=defaults.threshold,
        help="scores at or above this are positive predictions (default %(default)s)",
    )
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluate.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="draw ROC curves and traffic share (PNG)"
    )
    evaluate.add_argument(
        "--weights",
        metavar="V1=W1,V2=W2",
        help="constant variant weights for the sample-ratio check (each must be a variant of "
        "the capture)",
    )
    evaluate.add_argument(
        "--url",
        help="read the endpoint's weight history from the gateway at URL instead, and check each "
        "request against the weights in force when it was served",
    )
    evaluate.add_argument(
        "--shadow",
        action="store_true",
        help="compare each shadow variant with the production variant it copied, per request "
        "(agreement, score and latency differences); ground truth optional",
    )
    evaluate.set_defaults(log_level="WARNING")


def _add_replay_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    defaults = ReplaySettings()
    replay = commands.add_parser(
        "replay",
        help="send captured requests to a candidate variant (TargetVariant) and compare its "
        "answers with production's, as evaluate --shadow does",
        description="Reads the endpoint's data capture (Input and Output), sends each captured "
        "production request to the running gateway again with TargetVariant=VARIANT at a bounded "
        "rate (a progress bar on stderr), and prints the comparison of the candidate's answers "
        "with production's: the report of `evaluate --shadow`. Exit 2 when the capture, "
        "endpoint, variant or rate cannot be used.",
    )
    replay.add_argument(
        "--capture",
        type=Path,
        required=True,
        metavar="DIR",
        help="the capture destination (DestinationS3Uri's directory) or the endpoint's directory",
    )
    replay.add_argument("--endpoint", required=True, help="the endpoint to replay to")
    replay.add_argument(
        "--variant", required=True, help="the candidate production variant (TargetVariant)"
    )
    replay.add_argument(
        "--rate",
        type=float,
        default=defaults.rate,
        help=f"requests per second at most, up to {defaults.max_rate:g} (default %(default)s)",
    )
    replay.add_argument(
        "--limit", type=positive_count, metavar="N", help="replay only the first N requests"
    )
    replay.add_argument(
        "--threshold",
        type=float,
        default=EvaluationSettings().threshold,
        help="scores at or above this are positive predictions (default %(default)s)",
    )
    replay.add_argument("--json", action="store_true", help="print the report as JSON")
    replay.add_argument(
        "--url",
        default=f"http://{_DEFAULTS.host}:{_DEFAULTS.port}",
        help="the gateway (default %(default)s)",
    )
    replay.set_defaults(log_level="WARNING")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `splitserve` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "serve":
        return serve(settings_from_args(args), insecure=args.insecure, argv=argv)
    if args.command == "stats":
        return run_stats(args)
    if args.command == "weights":
        return run_weights(args)
    if args.command == "experiment":
        return run_experiment(args)
    if args.command == "evaluate":
        return run_evaluate(args)
    if args.command == "replay":
        return run_replay(args)
    return 2  # argparse refuses unknown commands before this


if __name__ == "__main__":
    raise SystemExit(main())
