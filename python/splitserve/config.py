"""Every setting of splitserve and its default, in one place.

Each part of the gateway takes the frozen dataclass it needs; nothing else in the package (nor
the Rust core) holds a default of its own. `cli.main` alone builds a `Settings` from argv.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote

#: SageMaker's InvokeEndpoint body limit (the service model's blob max): 6 MiB.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024

#: The most production variants one endpoint config may hold (the API's list maximum).
MAX_PRODUCTION_VARIANTS = 10

#: A FailureReason is at most this many characters (the service model's FailureReason max).
MAX_FAILURE_REASON = 1024

#: Endpoint, endpoint configuration and variant names: SageMaker's pattern (the service model's
#: EndpointName, EndpointConfigName and VariantName; the runtime model writes the same set as
#: `[a-zA-Z0-9](-*[a-zA-Z0-9])*`, which the length limit makes equal) and most characters.
NAME_PATTERN = r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}"
MAX_NAME_LENGTH = 63

#: The routing strategies (ProductionVariantRoutingConfig) the Rust router implements inside a
#: variant; `RouterSettings.default_routing_strategy` is one of them.
SUPPORTED_ROUTING_STRATEGIES = ("LEAST_OUTSTANDING_REQUESTS", "RANDOM")

#: Environment variables a model's Environment may not set (CreateModel refuses them, naming
#: the key; README, "Security"): they change how a worker process loads or runs code (the
#: dynamic loader, interpreters' start-up files and module paths, shells' start-up scripts,
#: OpenMP tool libraries, OpenSSL engines, glibc's tunables and locale modules), or the gateway
#: sets them itself. Names are matched exactly (the environment is case-sensitive).
RESERVED_ENVIRONMENT_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "IFS",
        "ENV",
        "BASH_ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "GCONV_PATH",
        "GLIBC_TUNABLES",
        "HOSTALIASES",
        "LOCPATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "OPENSSL_CONF",
        "OPENSSL_ENGINES",
        "OPENSSL_MODULES",
        "NODE_OPTIONS",
        "NODE_PATH",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "CLASSPATH",
        "RUBYOPT",
        "RUBYLIB",
        "SAGEMAKER_BIND_TO_PORT",
        "SAGEMAKER_SAFE_PORT_RANGE",
        "SM_MODEL_DIR",
    }
)

#: Prefixes of reserved names, but for `ALLOWED_ENVIRONMENT_NAMES`: LD_PRELOAD and the rest of
#: the loader's, PYTHONPATH, PYTHONSTARTUP, PYTHONWARNINGS (it imports the modules it names)
#: and the rest of Python's, OMP_TOOL_LIBRARIES and the rest of OpenMP's (GOMP_ for GNU's),
#: Perl's PERL5LIB/PERL5OPT/PERLLIB, and the exported Bash functions.
RESERVED_ENVIRONMENT_PREFIXES = ("LD_", "DYLD_", "PYTHON", "OMP_", "GOMP_", "PERL", "BASH_FUNC_")

#: Names under a reserved prefix that a model may set: they tune, they load nothing. Other
#: common variables (MALLOC_ARENA_MAX and glibc's other MALLOC_ tuning, MKL_NUM_THREADS, the
#: SAGEMAKER_ settings the SDK writes, XGBoost's) are not reserved at all.
ALLOWED_ENVIRONMENT_NAMES = frozenset(
    {
        "PYTHONUNBUFFERED",
        "PYTHONHASHSEED",
        "PYTHONIOENCODING",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONFAULTHANDLER",
        "OMP_NUM_THREADS",
        "OMP_WAIT_POLICY",
        "OMP_DYNAMIC",
    }
)

#: The state directory's default; everything below derives from the state directory in force
#: (`Settings.with_state_dir`).
DEFAULT_STATE_DIR = Path(".splitserve")

#: The state file, the model store and the workers' run directory, inside the state directory.
STATE_FILE_NAME = "state.sqlite3"
MODEL_STORE_DIR_NAME = "models"
RUN_DIR_NAME = "run"

#: Among replicas on one host: the directory, inside the state directory, where the host's
#: /metrics keeps what it last read of each replica (`metrics.spool`), so a replica that stops or
#: dies does not take its counts out of the host's totals.
METRICS_SPOOL_DIR_NAME = "metrics"

#: The workers' output log files, inside the state directory: one file per instance at
#: `logs/<endpoint>/<variant>/g<generation>/<index>.log` (README, "When something fails").
LOGS_DIR_NAME = "logs"

#: The lock file one gateway holds (fcntl.flock) on its state directory, holding its pid: a
#: second gateway on the same directory would launch duplicate workers.
LOCK_FILE_NAME = "gateway.lock"

#: The address the gateway, its instances and its replicas' internal listeners use by default.
LOOPBACK_ADDRESS = "127.0.0.1"

#: The most replica processes `serve --processes N` runs on one host.
MAX_REPLICA_PROCESSES = 256

#: The lock file the controller replica holds (fcntl.flock) while it controls the endpoints of a
#: state directory shared by several replica processes (the SQLite state's controller lease).
CONTROLLER_LOCK_FILE_NAME = "controller.lock"

#: The state file's mode: it holds every model's Environment, which may carry secrets.
STATE_FILE_MODE = 0o600

#: How many weight changes the state file keeps per endpoint (GET /splitserve/endpoints/<name>/
#: weights, `splitserve weights`, `evaluate --url`); older ones are dropped as new ones come.
WEIGHT_HISTORY_LIMIT = 1000

#: An inference experiment's run without a Schedule, and the longest Schedule (SageMaker's 7 and
#: 30 days; docs/sagemaker-api.md, "Shadow tests").
EXPERIMENT_DEFAULT_DURATION_SECONDS = 7 * 24 * 3600
EXPERIMENT_MAX_DURATION_SECONDS = 30 * 24 * 3600

#: The mode a missing state directory is created with: only the gateway's user may list or
#: change it; others may pass through (not 0700), because workers that run as another user (the
#: gateway as root) reach their run directory, `state_dir/run`, through it.
STATE_DIRECTORY_MODE = 0o711


@dataclass(frozen=True)
class RouterSettings:
    """How the Rust router picks variants and instances.

    Attributes:
        seed: fixed PRNG seed for reproducible routing (tests); None seeds from the OS.
        default_routing_strategy: instance choice inside a variant when the config has no
            RoutingConfig (SageMaker's default is LEAST_OUTSTANDING_REQUESTS).
    """

    seed: int | None = None
    default_routing_strategy: str = "LEAST_OUTSTANDING_REQUESTS"


@dataclass(frozen=True)
class ControlSettings:
    """What the control plane lets one endpoint ask of the host (README, "Limits").

    Both limits are checked when instances are asked for, as SageMaker checks its quotas: by
    CreateEndpoint and UpdateEndpoint (the configuration's counts) and by
    UpdateEndpointWeightsAndCapacities (DesiredInstanceCount), which answer
    ResourceLimitExceeded; CreateEndpointConfig stores any count the API allows.

    Attributes:
        max_instances_per_variant: the most instances one variant may run.
        max_vcpu_overcommit: the vCPUs of all of one endpoint's instances may add up to at most
            this many times the host's CPUs (`WorkerSettings.host_cpus()`). An instance counts
            its type's vCPUs, but never more than the host's CPUs: it is pinned to that many at
            most (`workers.catalog.CpuAllocator`), so a large type on a small host counts as
            the whole host, not as more.
        alarm_poll_seconds: how often a stepped UpdateEndpoint (DeploymentConfig's CANARY or
            LINEAR, README "Deployment guardrails") reads its AutoRollbackConfiguration alarms'
            states while it bakes; an alarm in ALARM rolls the update back within this.
    """

    max_instances_per_variant: int = 16
    max_vcpu_overcommit: float = 4.0
    #: How often the inference experiments' runner looks at the schedule and at the endpoints
    #: it is waiting for (control/experiment_runner.py); an operation wakes it at once.
    experiment_check_seconds: float = 1.0
    alarm_poll_seconds: float = 1.0


@dataclass(frozen=True)
class WorkerSettings:
    """How model-worker instances are started, health-checked, batched and stopped.

    Attributes:
        run_dir: where the instances' Unix sockets and unpacked model directories live.
        cpu_pool: the host CPUs instances may be pinned to; None means the gateway's own affinity.
        use_tcp: built-in workers listen on TCP instead of a Unix socket.
        listen_host: the address TCP instances listen on: loopback, unless replicas on other
            hosts forward to them (a PostgreSQL state: the advertise address).
        ping_timeout_seconds: a /ping must answer within this (the container contract: 2 s).
        health_interval_seconds: time between health checks of a running instance.
        unhealthy_after_failures: consecutive failed pings before an instance is replaced.
        startup_timeout_seconds: how long a new instance has to pass its first /ping.
        invocation_timeout_seconds: a worker must answer /invocations within this (contract: 60 s).
        restart_backoff_initial_seconds: the first delay before restarting a failed instance.
        restart_backoff_max_seconds: the cap of the exponential restart backoff.
        stop_grace_seconds: SIGTERM, then this long for in-flight requests, then SIGKILL (30 s).
        max_batch_rows: dynamic batching: the most rows one predict call coalesces.
        max_batch_wait_microseconds: dynamic batching: how long a batch waits for more rows.
        pipeline_depth: how many requests the gateway may send on one connection to a built-in
            XGBoost instance before the first is answered (HTTP/1.1 pipelining, which the
            built-in server answers concurrently, so requests that arrive together share a
            write, a read and a batch; 1: none). Bring-your-own images set their own in the
            image registry (default 1).
        allow_pickle: load pickled XGBoost models (unpickling runs code, so off by default).
        memory_cap: cap each instance's address space at its instance type's memory.
        worker_user: the account workers run as when the gateway runs as root (an unprivileged
            one, so a model server cannot act as root; naming root keeps them root). Ignored
            when the gateway is not root: its workers run as its own user.
        max_artifact_bytes: the most bytes a model artifact may unpack to (4 GiB).
        max_artifact_files: the most files and directories a model artifact may unpack to.
        output_log_lines_per_second: how many lines of each instance's output per second are
            relayed to the gateway's log; the rest are counted in a "suppressed" line (all of
            the last lines still go into a failure reason).
        log_dir: where each instance's output log file is kept (every line, unlike the relay);
            None keeps no files. `Settings.with_state_dir` (what `splitserve serve` uses) puts
            it in the state directory; the bare default keeps none, so a test's workers write
            nothing outside its own directory.
        log_file_bytes: an instance's log file is rotated once it reaches this size.
        log_file_backups: how many rotated files (`.log.1` ...) are kept beside the current one.
    """

    run_dir: Path = DEFAULT_STATE_DIR / RUN_DIR_NAME
    cpu_pool: tuple[int, ...] | None = None
    use_tcp: bool = False
    listen_host: str = LOOPBACK_ADDRESS
    ping_timeout_seconds: float = 2.0
    health_interval_seconds: float = 2.0
    unhealthy_after_failures: int = 3
    startup_timeout_seconds: float = 240.0
    invocation_timeout_seconds: float = 60.0
    restart_backoff_initial_seconds: float = 0.5
    restart_backoff_max_seconds: float = 30.0
    stop_grace_seconds: float = 30.0
    max_batch_rows: int = 64
    max_batch_wait_microseconds: int = 200
    pipeline_depth: int = 8
    allow_pickle: bool = False
    memory_cap: bool = False
    worker_user: str = "nobody"
    max_artifact_bytes: int = 4 * 1024**3
    max_artifact_files: int = 10_000
    output_log_lines_per_second: int = 20
    log_dir: Path | None = None
    log_file_bytes: int = 10 * 1024 * 1024
    log_file_backups: int = 3

    def host_cpus(self) -> tuple[int, ...]:
        """The CPUs instances may use: `cpu_pool` if set, else those this process may run on."""
        if self.cpu_pool is not None:
            return self.cpu_pool
        return tuple(sorted(os.sched_getaffinity(0)))


@dataclass(frozen=True)
class ForwardingSettings:
    """How the gateway talks to its workers.

    Attributes:
        max_connections: connections open at once to one instance; requests beyond wait for
            one to come free (within their timeout). Enough for the concurrency a worker can
            use: more cost it an accept each and hold file descriptors.
        max_idle_connections: kept-alive connections per instance between bursts.
        connect_timeout_seconds: a worker must accept a connection within this (the contract
            says 250 ms; a little slack for a loaded host).
        max_response_bytes: the largest answer a worker may send back.
        unreachable_pause_seconds: a replica that does not run the health checks (not the
            controller) routes nothing to an instance it could not connect to for this long,
            then goes back to the health the controller publishes.
    """

    max_connections: int = 64
    max_idle_connections: int = 64
    connect_timeout_seconds: float = 1.0
    max_response_bytes: int = 64 * 1024 * 1024
    unreachable_pause_seconds: float = 2.0


@dataclass(frozen=True)
class CaptureSettings:
    """How data capture (DataCaptureConfig) queues and writes its JSON Lines files.

    Attributes:
        max_queued_bytes: the most payload bytes waiting for the writer (plus a fixed allowance
            per record); a sampled request that finds the queue full is dropped and counted.
        rotate_bytes: a capture file is closed and a new one started once it holds this much.
        max_disk_usage: capture stops while the destination's file system is fuller than this
            fraction (SageMaker keeps disk use under 75 %).
        disk_check_interval_seconds: how often the writer looks at the destination's disk use.
        idle_close_seconds: a capture file nothing was written to for this long is closed.
        close_timeout_seconds: on shutdown, how long the writer may take to write what is queued.
        seed: fixed PRNG seed for the sampling draw (tests); None seeds from the OS.
    """

    max_queued_bytes: int = 64 * 1024 * 1024
    rotate_bytes: int = 64 * 1024 * 1024
    max_disk_usage: float = 0.75
    disk_check_interval_seconds: float = 5.0
    idle_close_seconds: float = 60.0
    close_timeout_seconds: float = 30.0
    seed: int | None = None


@dataclass(frozen=True)
class ShadowSettings:
    """How requests are copied to shadow variants (docs/architecture.md, "Shadow variants").

    Attributes:
        queue_size: copies waiting for each shadow variant of an endpoint generation; a copy that
            finds its queue full is dropped and counted (`splitserve_shadow_dropped_total`), so
            a slow or dead shadow never holds production's requests.
        senders: tasks per shadow variant that forward its queued copies, each one copy at a
            time: at most this many copies are in flight to one shadow variant.
        timeout_seconds: how long a copy may wait for the shadow's answer before it counts as
            the shadow's model error (production's own timeout is
            `WorkerSettings.invocation_timeout_seconds`).
    """

    queue_size: int = 1024
    senders: int = 4
    timeout_seconds: float = 60.0


@dataclass(frozen=True)
class StatsSettings:
    """How the gateway keeps per-minute statistics (`splitserve stats`) and samples instances.

    Attributes:
        retention_minutes: how many whole minutes of per-variant counts and latency histograms
            are kept (a ring of this many slots plus the current minute per variant): 24 hours.
        default_since_seconds: the window `splitserve stats` shows without --since.
        default_period_seconds: the row length `splitserve stats` uses without --per.
        cpu_sample_min_seconds: an instance's CPU utilisation is the CPU time it used between two
            scrapes at least this far apart; a scrape sooner than that repeats the last value.
        client_timeout_seconds: how long `splitserve stats` waits for the gateway.
        peer_metrics_timeout_seconds: how long a scrape of /metrics waits for each other
            replica on the host to give its own exposition (one that does not is left out of
            that scrape); well under Prometheus's default scrape timeout of 10 s.
        peer_metrics_max_bytes: the largest own exposition taken from another replica.
    """

    retention_minutes: int = 1440
    default_since_seconds: int = 15 * 60
    default_period_seconds: int = 60
    cpu_sample_min_seconds: float = 1.0
    client_timeout_seconds: float = 10.0
    peer_metrics_timeout_seconds: float = 2.0
    peer_metrics_max_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class CloudWatchSettings:
    """CloudWatch's API on the gateway (splitserve.cloudwatch; docs/sagemaker-api.md, section 7).

    Attributes:
        retention_days: how long per-minute figures stay in the state store (`--metrics-retention`);
            CloudWatch keeps one-minute data 15 days.
        max_retention_days: the largest `--metrics-retention` accepted, so the store stays bounded.
        flush_interval_seconds: how often the minutes in memory are written to the store (a restart
            loses at most this much) and the instances' CPU and memory are sampled.
        max_datapoints: the most datapoints one GetMetricStatistics call returns
            (CloudWatch's 1,440); a call that could return more is InvalidParameterCombination.
        max_metric_data_queries: the most MetricDataQueries in one GetMetricData call.
        max_metric_data_datapoints: GetMetricData's page size without MaxDatapoints (CloudWatch's
            100,800); the rest comes with a NextToken.
        list_metrics_page_size: metrics per ListMetrics page (CloudWatch's 500).
        describe_alarms_page_size: alarms per DescribeAlarms page without MaxRecords.
        max_alarms: the most metric alarms the gateway keeps.
        alarm_history_per_alarm: history items kept per alarm (older ones are dropped).
        alarm_evaluation_interval_seconds: how often alarms are evaluated (CloudWatch: each
            minute).
    """

    retention_days: int = 15
    max_retention_days: int = 455
    flush_interval_seconds: float = 10.0
    max_datapoints: int = 1440
    max_metric_data_queries: int = 500
    max_metric_data_datapoints: int = 100_800
    list_metrics_page_size: int = 500
    describe_alarms_page_size: int = 50
    max_alarms: int = 5000
    alarm_history_per_alarm: int = 1000
    alarm_evaluation_interval_seconds: float = 60.0


@dataclass(frozen=True)
class AccountSettings:
    """The identity that ARNs and error messages name (no AWS account is involved)."""

    region: str = "us-east-1"
    account_id: str = "123456789012"


@dataclass(frozen=True)
class AuthSettings:
    """Whether requests must carry an AWS Signature Version 4 (see splitserve.wiring.auth).

    Attributes:
        keys_file: TOML file of access keys and secrets; None turns authentication off.
        data_plane: also require signatures on InvokeEndpoint (the control plane always needs
            them once `keys_file` is set).
        max_clock_skew_seconds: how far a request's date may be from the gateway's clock (AWS
            allows 5 minutes).
    """

    keys_file: Path | None = None
    data_plane: bool = False
    max_clock_skew_seconds: float = 300.0


@dataclass(frozen=True)
class LogSettings:
    """What the gateway logs and in which form (splitserve.wiring.logs).

    Attributes:
        level: the root logger's level.
        format: "text" (one human line per record) or "json" (one JSON object per line: time,
            level, logger, message, request_id when known), for log shippers.
        access_log: None for no access log (the default), "-" for the gateway's log stream,
            else a file the access lines are appended to.
        failures_per_second: failed invocations logged per variant and second; beyond it they
            are counted and one "suppressed K" line follows, so a storm cannot flood the disk.
        failure_message_chars: how much of a worker's error message a failure line quotes.
    """

    level: str = "INFO"
    format: str = "text"
    access_log: str | None = None
    failures_per_second: int = 5
    failure_message_chars: int = 200


#: The values `LogSettings.format` (and `--log-format`) may take.
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class EdgeSettings:
    """What the gateway's server allows each client connection (splitserve.wiring.edge).

    Attributes:
        max_connections: client connections open at once; None derives it from the file
            descriptor limit: (limit - descriptor_reserve) // 2, since each connection with a
            request in flight holds a second descriptor, its connection to a worker. At the cap,
            idle connections (no request in progress) are closed, least recently active first;
            with none idle, a new connection is answered 503 and closed.
        descriptor_reserve: descriptors kept out of the clients' reach for everything else the
            gateway opens: health checks (one socket per instance), worker spawns (pipes), the
            state store, capture files, the log and the listening socket.
        header_read_timeout_seconds: a request head (request line and headers) must arrive whole
            within this, counted from the connection's opening or the head's first byte; else
            the connection is closed. A periodic sweep checks it, so it closes within a quarter
            of it later.
        keepalive_timeout_seconds: an idle kept-alive connection is closed after this (aiohttp's
            run_app default, which the gateway used before it had its own server set-up).
        max_inflight_body_bytes: the most request-body bytes held at once (by Content-Length, a
            chunked body counting as `Settings.max_payload_bytes`); a request beyond it is
            answered 503 ServiceUnavailable with Retry-After before its body is read. One body
            is always admitted when none is in flight. None derives it from the host's memory:
            `inflight_body_memory_fraction` of it, at most `inflight_body_bytes_cap`.
        inflight_body_memory_fraction: the share of physical memory the derived budget takes.
        inflight_body_bytes_cap: the derived budget's upper bound.
        busy_retry_after_seconds: the Retry-After of those 503 answers.
        memory_trim_interval_seconds: after a body of at least `memory_trim_min_bytes` is
            released, the gateway asks glibc to return freed memory (malloc_trim) this long
            after, at most once per interval.
        memory_trim_min_bytes: the body size that makes a trim worth its cost (~1 ms).
        listen_backlog: the listening socket's backlog (aiohttp's run_app default).
    """

    max_connections: int | None = None
    descriptor_reserve: int = 256
    header_read_timeout_seconds: float = 10.0
    keepalive_timeout_seconds: float = 75.0
    max_inflight_body_bytes: int | None = None
    inflight_body_memory_fraction: float = 1 / 8
    inflight_body_bytes_cap: int = 1024 * 1024 * 1024
    busy_retry_after_seconds: int = 1
    memory_trim_interval_seconds: float = 1.0
    memory_trim_min_bytes: int = 1024 * 1024
    listen_backlog: int = 128


@dataclass(frozen=True)
class ReplicaSettings:
    """Gateway replicas: several processes over one shared state (README, "Running several
    replicas"; docs/architecture.md, "Replicas").

    Attributes:
        processes: how many replica processes `serve` runs on this host, sharing its port with
            SO_REUSEPORT; 1 runs the gateway in the calling process, as it always ran.
        supervisor_pid: set only in a replica process that `serve --processes N` started: the
            supervising process's pid (the replica checks it is still its parent and dies with it).
        replica_index: which of the supervisor's N replicas this process is (0-based; in logs).
        advertise_address: the address this replica's internal listener binds and other replicas
            reach it at (the controller's control plane, a host's /metrics); the host's loopback
            for replicas on one host.
        heartbeat_interval_seconds: how often a replica writes its heartbeat (and tries for the
            controller lease when no one holds it).
        replica_timeout_seconds: a replica whose heartbeat is older is not live: weight changes
            stop waiting for it and /metrics stops asking it.
        routing_poll_seconds: how often a replica that is not the controller checks the store's
            routing version (a cheap read) for new routing documents.
        propagation_timeout_seconds: a weight change waits at most this long for every live
            replica to route with it before it answers (it answers either way, and logs the
            replicas that had not caught up).
        restart_backoff_seconds: the supervisor's wait before restarting a replica that died,
            doubled for each quick death in a row up to `restart_backoff_max_seconds`.
        restart_backoff_max_seconds: the longest such wait.
        drain_timeout_seconds: on SIGTERM the supervisor waits this long for its replicas to
            drain and exit before it kills them.
        forward_timeout_seconds: a control-plane call a replica passes on to the controller gets
            this long for its answer (UpdateEndpoint answers fast; deployments run in the
            background).
        controller_wait_seconds: a control-plane call that finds no live controller (one is
            taking over, or its heartbeat has not resumed after a database outage), or one
            whose internal listener does not accept yet, waits this long for it before it is
            answered 503: nothing was delivered, so asking again is safe.
    """

    processes: int = 1
    supervisor_pid: int | None = None
    replica_index: int = 0
    advertise_address: str = LOOPBACK_ADDRESS
    heartbeat_interval_seconds: float = 1.0
    replica_timeout_seconds: float = 5.0
    routing_poll_seconds: float = 0.05
    propagation_timeout_seconds: float = 5.0
    restart_backoff_seconds: float = 0.5
    restart_backoff_max_seconds: float = 10.0
    drain_timeout_seconds: float = 30.0
    forward_timeout_seconds: float = 60.0
    controller_wait_seconds: float = 10.0

    @property
    def is_replica(self) -> bool:
        """True in a process that a supervisor started as one of several replicas."""
        return self.supervisor_pid is not None


#: Where instances run (`--placement`): child processes of the gateway, or actors on a Ray cluster.
PLACEMENTS = ("local", "ray")


@dataclass(frozen=True)
class PlacementSettings:
    """Where the controller places instances (README, "Running on a cluster";
    docs/architecture.md, "Placement").

    Attributes:
        backend: "local" (child processes of the controller, on its host) or "ray" (detached
            actors on a Ray cluster, which outlive any gateway).
        ray_address: the Ray cluster to join (`ray.init(address=...)`: "auto", or the head's
            "HOST:PORT"); used only with the "ray" backend.
        ray_namespace: the Ray namespace the instance actors are named in: gateways sharing a
            state use the same one, and separate deployments on one cluster different ones.
        type_resources: (instance type pattern, custom resource) pairs, first match wins (`*`
            and `?` as in shell patterns): an instance of a matching type also asks for
            `custom_resource_amount` of that resource, so it only lands on nodes that declare
            it (e.g. `ml.c5.*` on a compute pool started with `--resources '{"compute": 1}'`).
        custom_resource_amount: how much of its custom resource one instance asks for; a node
            declaring 1 of it takes up to 1 / this many instances.
        reserve_memory: each actor reserves its instance type's memory (Ray's logical `memory`
            resource) besides its vCPUs, so Ray packs instances onto nodes as SageMaker does.
        placement_timeout_seconds: a new actor that no node has room for within this fails its
            deployment (a type no node could ever hold fails at once).
        actor_call_timeout_seconds: the longest any call to an instance actor (its address, a
            stop) may take before the actor is treated as lost.
        connect_timeout_seconds: joining the cluster fails when nothing answers at
            `ray_address` within this.
        node_model_dir: the directory on each node for the model artifacts the actors
            unpack, their servers' private directories and the host's book of pinned CPUs
            (`serve --ray-node-dir`); None is `splitserve-ray` in the node's temporary
            directory.
        s3_endpoint_url: an S3-compatible endpoint (`http://HOST:PORT`) each node fetches a
            model artifact from itself, with boto3 and the credentials boto3 finds on the
            node, instead of the controller shipping its bytes through the object store; the
            artifact's key is its path under the model store (`s3://bucket/key`). None ships.
    """

    backend: str = "local"
    ray_address: str = "auto"
    ray_namespace: str = "splitserve"
    type_resources: tuple[tuple[str, str], ...] = ()
    custom_resource_amount: float = 0.001
    reserve_memory: bool = True
    placement_timeout_seconds: float = 60.0
    actor_call_timeout_seconds: float = 30.0
    connect_timeout_seconds: float = 10.0
    node_model_dir: Path | None = None
    s3_endpoint_url: str | None = None


@dataclass(frozen=True)
class DatabaseSettings:
    """How the gateway talks to its state database (splitserve.database; README, "State in
    PostgreSQL").

    Attributes:
        connect_timeout_seconds: the longest a new PostgreSQL connection, or a wait for a free
            one in the pool, may take; past it the call fails with DatabaseUnavailable (503), so
            a database that is down answers in bounded time.
        statement_timeout_seconds: PostgreSQL's statement_timeout for every statement (a
            write lock waited for included).
        pool_min_size: PostgreSQL connections the pool keeps open.
        pool_max_size: the most PostgreSQL connections one pool opens; a gateway process has
            two (the replicas' heartbeats and lease, and the one the other parts share), and a
            replica one more for LISTEN.
        reconnect_timeout_seconds: how long the pool keeps retrying, with a growing wait, to
            replace a connection the server dropped before it gives up and starts afresh on
            the next call; short, so the pool is whole again soon after the server is back
            (meanwhile a call that finds it empty opens a connection of its own).
        sqlite_busy_timeout_seconds: how long an SQLite statement waits for another process's
            write lock before it fails with DatabaseUnavailable.
        change_poll_seconds: how often an SQLite change feed reads `PRAGMA data_version`
            (PostgreSQL's LISTEN needs no polling).
        sqlite_synchronous: SQLite's `synchronous` for this process's connections: FULL (each
            commit reaches the disk before it returns: what the API reported survives a crash)
            or NORMAL (WAL's safe lighter mode: a crash may lose the last commits, never
            corrupts), which the replicas' heartbeats and routing documents use, as they are
            rewritten every second and republished by a new controller anyway.
    """

    connect_timeout_seconds: float = 5.0
    statement_timeout_seconds: float = 10.0
    pool_min_size: int = 1
    pool_max_size: int = 8
    reconnect_timeout_seconds: float = 10.0
    sqlite_busy_timeout_seconds: float = 5.0
    change_poll_seconds: float = 0.05
    sqlite_synchronous: str = "FULL"


@dataclass(frozen=True)
class FeedbackSettings:
    """Feedback by inference id and the live experiment view (README, "Closing the loop").

    Attributes:
        index_enabled: keep an index entry for every answered invocation (off: feedback
            refuses every label as unknown, and the request path records nothing).
        index_queue_size: answered invocations waiting for the index's writer; more are dropped
            (counted in `splitserve_feedback_index_dropped_total`), never waited for.
        index_flush_seconds: how often the writer moves waiting entries to the state database.
        index_batch_rows: the most entries one write transaction holds.
        answer_max_bytes: how much of an answer the index keeps for its scores (parsed only when
            a label joins it); a longer answer is kept cut, and a label for it is refused as
            unscorable when the cut answer does not parse.
        retention_seconds: how long an entry waits for its label: 24 hours; a label after that
            is refused as late.
        max_index_rows: the most entries kept (oldest pruned first) whatever their age.
        prune_seconds: how often retention and the row cap are applied.
        max_body_bytes: the largest feedback request body.
        max_records: the most label records one feedback request may carry.
        refresh_seconds: how often a replica reads the labels other replicas joined into its
            experiment view (the view also reads them whenever it is asked for).
        alpha: the live experiment's significance level (always-valid: it holds however often
            the view is looked at).
        threshold: a score at or above this is a positive prediction.
        metric: the metric the live experiment declares a winner on (`evaluation.sequential`'s
            METRICS).
        client_timeout_seconds: how long `splitserve experiment` and `splitserve.feedback` wait.
        watch_seconds: how often `splitserve experiment --watch` redraws.
        action_interval_seconds: how often the controller runs the automatic actions of the
            endpoints tagged `splitserve:experiment` (so a bandit pushes new weights at most
            this often).
        promote_step_percent, promote_wait_seconds: the steps of a promotion (`promote`
            without its own): the winner's share moves this many points a step, each step
            baked this long (the `splitserve:ramp` tag's StepPercent and WaitSeconds).
        bandit_min_share: each variant's least share under `bandit` without its own, so the
            evaluation of none starves.
    """

    index_enabled: bool = True
    index_queue_size: int = 100_000
    index_flush_seconds: float = 1.0
    index_batch_rows: int = 5000
    answer_max_bytes: int = 4096
    retention_seconds: int = 24 * 3600
    max_index_rows: int = 2_000_000
    prune_seconds: float = 60.0
    max_body_bytes: int = 1024 * 1024
    max_records: int = 1000
    refresh_seconds: float = 5.0
    alpha: float = 0.05
    threshold: float = 0.5
    metric: str = "accuracy"
    client_timeout_seconds: float = 10.0
    watch_seconds: float = 2.0
    action_interval_seconds: float = 5.0
    promote_step_percent: float = 25.0
    promote_wait_seconds: int = 10
    bandit_min_share: float = 0.1


@dataclass(frozen=True)
class Settings:
    """Everything `splitserve serve` needs.

    Attributes:
        host: the address the gateway listens on.
        port: the port the gateway listens on (both planes and /metrics share it).
        state_dir: where persisted state (SQLite) and worker run files live.
        model_store: the root that `s3://bucket/key` model and capture URLs resolve under.
        images_file: TOML registry mapping bring-your-own image names to server commands.
        allowed_artifact_paths: directories besides `model_store` that file:// and absolute
            ModelDataUrl locations may name (everything else on the host is refused).
        max_payload_bytes: the largest InvokeEndpoint body accepted.
        body_read_timeout_seconds: an InvokeEndpoint body must arrive whole within this, counted
            from the handler's start; a slower one (a client trickling bytes to hold the
            connection) is answered 408. aiohttp has no body timeout of its own.
        control: the limits the control plane puts on one endpoint's instances.
        auth: signature checks on the control and data planes (off by default).
        edge: limits on client connections: count, header time, body bytes in flight.
        cloudwatch: CloudWatch's API: retention of per-minute figures, limits, alarms.
        logs: the log's level and format, the access log, failure-line rates.
        replicas: how many replica processes, and how they find and follow each other.
        metrics_created: /metrics also shows each counter's and histogram's `_created` series
            (prometheus_client's creation timestamps); off, as they double the output for a
            figure Prometheus does not use.
        state_database_url: `--state URL`: the state database (`sqlite:///absolute/path` or
            `postgresql://...`); None keeps it in the state directory's SQLite file
            (`state_url`). The state directory still holds the model store, runs and logs.
        database: timeouts and pool sizes of the state database.
        shadow: the queues and senders that copy requests to shadow variants.
        placement: where instances run: local processes or a Ray cluster.
        feedback: the inference-id index, feedback's limits and the live experiment.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    state_dir: Path = DEFAULT_STATE_DIR
    model_store: Path = DEFAULT_STATE_DIR / MODEL_STORE_DIR_NAME
    images_file: Path | None = None
    allowed_artifact_paths: tuple[Path, ...] = ()
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    body_read_timeout_seconds: float = 30.0
    account: AccountSettings = field(default_factory=AccountSettings)
    router: RouterSettings = field(default_factory=RouterSettings)
    control: ControlSettings = field(default_factory=ControlSettings)
    workers: WorkerSettings = field(default_factory=WorkerSettings)
    forwarding: ForwardingSettings = field(default_factory=ForwardingSettings)
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    shadow: ShadowSettings = field(default_factory=ShadowSettings)
    stats: StatsSettings = field(default_factory=StatsSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    edge: EdgeSettings = field(default_factory=EdgeSettings)
    cloudwatch: CloudWatchSettings = field(default_factory=CloudWatchSettings)
    logs: LogSettings = field(default_factory=LogSettings)
    replicas: ReplicaSettings = field(default_factory=ReplicaSettings)
    metrics_created: bool = False
    state_database_url: str | None = None
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    placement: PlacementSettings = field(default_factory=PlacementSettings)
    feedback: FeedbackSettings = field(default_factory=FeedbackSettings)

    @property
    def state_file(self) -> Path:
        """The control plane's SQLite file, inside the state directory."""
        return self.state_dir / STATE_FILE_NAME

    @property
    def state_url(self) -> str:
        """The state database's URL: `--state`, or the state directory's SQLite file."""
        if self.state_database_url is not None:
            return self.state_database_url
        return f"sqlite://{quote(str(self.state_file.absolute()))}"

    @property
    def shares_state(self) -> bool:
        """True when this process is one replica among others over its state: one that
        `serve --processes N` started, or any gateway over a PostgreSQL state (which gateways on
        other hosts may share). It then joins the replicas (`wiring.replicas`)."""
        return self.replicas.is_replica or self.state_on_server

    @property
    def state_on_server(self) -> bool:
        """True when the state is a PostgreSQL database, which gateways on several hosts may
        share: their instances listen on TCP at the advertise address, for the others to reach."""
        return self.state_url.startswith(("postgresql:", "postgres:"))

    @property
    def lock_file(self) -> Path:
        """The file whose lock says which gateway owns the state directory."""
        return self.state_dir / LOCK_FILE_NAME

    def with_state_dir(self, state_dir: Path, model_store: Path | None = None) -> Settings:
        """These settings moved to `state_dir`, with what derives from it: the model store
        (unless `model_store` is given) and the workers' run directory."""
        return replace(
            self,
            state_dir=state_dir,
            model_store=state_dir / MODEL_STORE_DIR_NAME if model_store is None else model_store,
            workers=replace(
                self.workers,
                run_dir=state_dir / RUN_DIR_NAME,
                log_dir=state_dir / LOGS_DIR_NAME,
            ),
        )


@dataclass(frozen=True)
class EvaluationSettings:
    """How `splitserve evaluate` scores variants against ground truth and compares them.

    Attributes:
        threshold: a score at or above this is a positive prediction (accuracy, precision,
            recall, F1); AUC and log loss use the scores themselves.
        confidence: the level of every confidence interval; 1 - confidence is the significance
            level of every test.
        bootstrap_resamples: resamples for the bootstrap intervals (F1, log loss).
        seed: the bootstrap's PRNG seed, so that a report is reproducible.
        detectable_auc_difference: the AUC difference the power analysis sizes traffic for.
        detectable_accuracy_difference: the accuracy difference the power analysis sizes for.
        power: the probability of detecting those differences that the traffic is sized for.
        sample_ratio_alpha: the chi-square p-value below which the observed split is called a
            sample-ratio mismatch (strict, as is usual for this check: it runs on every report,
            and a false alarm sends people hunting for a bug that is not there).
        describe_timeout_seconds: how long DescribeEndpoint (`--url`) may take.
    """

    threshold: float = 0.5
    confidence: float = 0.95
    bootstrap_resamples: int = 2000
    seed: int = 0
    detectable_auc_difference: float = 0.02
    detectable_accuracy_difference: float = 0.02
    power: float = 0.8
    sample_ratio_alpha: float = 0.001
    describe_timeout_seconds: float = 10.0


@dataclass(frozen=True)
class SequentialSettings:
    """The always-valid statistics of a live experiment and the Thompson-sampling bandit
    (`splitserve.evaluation.sequential`, `splitserve.evaluation.bandit`; docs/statistics.md).

    Attributes:
        alpha: the experiment's error level: the chance, over the whole experiment however often
            it is looked at, that any interval misses its truth or a difference is declared
            where there is none (split evenly over the pairs when there are more than two).
        threshold: a score at or above this is a positive prediction.
        metric: the metric a winner is declared on.
        horizon_labels: the labels per variant the normal mixture is tuned for: its intervals
            are narrowest there (any other value keeps them valid, only a little wider).
        min_labels: labels each variant needs before a difference may be declared (the plug-in
            variances of the differences are asymptotic; this keeps the first looks honest).
        log_loss_clip: scores are clipped to [clip, 1 - clip] for the live log loss, which
            bounds each row's loss by -log(clip) (a bounded mean has a nonasymptotic interval).
        auc_bins: the live AUC counts scores in this many equal bins of [0, 1] (memory stays
            bounded however many labels arrive; ties within a bin count half).
        srm_alpha: the always-valid p-value below which the live split is a sample-ratio
            mismatch (strict, as for `evaluate`).
        srm_prior_strength: the Dirichlet prior's total weight of the live SRM test, centred on
            the expected shares.
        bandit_draws: Monte Carlo draws per weights() call of the Thompson bandit.
    """

    alpha: float = 0.05
    threshold: float = 0.5
    metric: str = "accuracy"
    horizon_labels: int = 10_000
    min_labels: int = 100
    log_loss_clip: float = 1e-3
    auc_bins: int = 1000
    srm_alpha: float = 0.001
    srm_prior_strength: float = 100.0
    bandit_draws: int = 10_000


@dataclass(frozen=True)
class ReplaySettings:
    """`splitserve replay`: captured requests sent again to a candidate variant.

    Attributes:
        rate: requests per second when `--rate` is not given (bounded so that a replay never
            floods the endpoint that serves production too).
        max_rate: the largest `--rate` accepted.
        timeout_seconds: how long each replayed request may take (connect and answer).
        progress_interval_seconds: the least time between two redraws of the progress bar.
        max_failure_examples: how many failed requests the report quotes (all are counted).
    """

    rate: float = 10.0
    max_rate: float = 1000.0
    timeout_seconds: float = 60.0
    progress_interval_seconds: float = 0.2
    max_failure_examples: int = 5
