"""Configuration of the other gateways `benches/load.py` compares splitserve with, and of the
stand-in workers: nginx and HAProxy as weighted gateways over the same instances, and nginx as a
bring-your-own "model server" that answers at once.

Each gateway does what splitserve does on the success path: POST /endpoints/<name>/invocations
goes to /invocations of one instance of a variant picked by weight (70/30), or of the variant in
X-Amzn-SageMaker-Target-Variant, over kept-alive connections; the answer carries
X-Amzn-Invoked-Production-Variant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: The image name the stand-in worker is registered under.
STANDIN_IMAGE = "bench.local/standin-nginx:1"
#: What the stand-in answers to every /invocations: one prediction, as the XGBoost server does.
STANDIN_BODY = "0.5\n"


@dataclass(frozen=True)
class Upstream:
    """One variant's instance as the proxies address it.

    Attributes:
        variant: the variant name.
        weight: its weight.
        unix_path: its Unix socket, or None for TCP.
        port: its loopback TCP port (when `unix_path` is None).
    """

    variant: str
    weight: float
    unix_path: str | None = None
    port: int | None = None

    def nginx(self) -> str:
        """The address as an nginx `server` takes it."""
        return f"unix:{self.unix_path}" if self.unix_path else f"127.0.0.1:{self.port}"

    def haproxy(self) -> str:
        """The address as an HAProxy `server` line takes it."""
        return f"unix@{self.unix_path}" if self.unix_path else f"127.0.0.1:{self.port}"

    def plain(self) -> str:
        """The address as `benches.plain_gateway --variant` takes it."""
        return f"unix:{self.unix_path}" if self.unix_path else f"tcp:127.0.0.1:{self.port}"


def nginx_gateway_config(directory: Path, port: int, upstreams: list[Upstream]) -> Path:
    """Write nginx's configuration as a gateway on `port` over `upstreams`; return its path.

    `split_clients` hashes the per-request random `$request_id`, which makes a weighted random
    pick; a TargetVariant header names the upstream block directly.
    """
    total = sum(upstream.weight for upstream in upstreams)
    splits = "".join(
        f"    {100 * upstream.weight / total:.2f}% {upstream.variant};\n"
        for upstream in upstreams[:-1]
    )
    blocks = "".join(
        f"  upstream {u.variant} {{ server {u.nginx()}; keepalive 128; }}\n" for u in upstreams
    )
    # `user root`: the built-in workers' sockets are in a directory only their owner may enter;
    # nginx's worker would otherwise drop to `nobody` (the directive is ignored unless root).
    config = f"""
user root;
worker_processes 1;
daemon off;
pid {directory}/nginx-gateway.pid;
error_log {directory}/nginx-gateway.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {directory}/nginx-body;
  proxy_temp_path {directory}/nginx-proxy;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
{blocks}
  split_clients "$request_id" $weighted {{
{splits}    * {upstreams[-1].variant};
  }}
  map $http_x_amzn_sagemaker_target_variant $variant {{
    "" $weighted;
    default $http_x_amzn_sagemaker_target_variant;
  }}
  server {{
    listen 127.0.0.1:{port} reuseport;
    location ~ ^/endpoints/[^/]+/invocations$ {{
      proxy_pass http://$variant/invocations;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      add_header X-Amzn-Invoked-Production-Variant $variant always;
    }}
  }}
}}
"""
    path = directory / "nginx-gateway.conf"
    path.write_text(config)
    return path


def haproxy_gateway_config(directory: Path, port: int, upstreams: list[Upstream]) -> Path:
    """Write HAProxy's configuration as a gateway on `port` over `upstreams`; return its path.

    `balance random(1)` draws one server by weight per request; a TargetVariant header selects
    the backend of that name.
    """
    weighted = "".join(
        f"  server {u.variant} {u.haproxy()} weight {round(u.weight)}\n" for u in upstreams
    )
    targeted = "".join(
        f"backend {u.variant}\n  http-request set-path /invocations\n"
        f"  http-response set-header X-Amzn-Invoked-Production-Variant {u.variant}\n"
        f"  server {u.variant} {u.haproxy()}\n"
        for u in upstreams
    )
    config = f"""
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  option http-keep-alive
  http-reuse always
frontend gateway
  bind 127.0.0.1:{port}
  acl targeted req.hdr(x-amzn-sagemaker-target-variant) -m found
  use_backend %[req.hdr(x-amzn-sagemaker-target-variant)] if targeted
  default_backend weighted
backend weighted
  balance random(1)
  http-request set-path /invocations
  http-response set-header X-Amzn-Invoked-Production-Variant %[srv_name]
{weighted}{targeted}"""
    path = directory / "haproxy-gateway.cfg"
    path.write_text(config)
    return path


_STANDIN_SCRIPT = """#!/bin/sh
# A stand-in model server: nginx answering every /invocations at once with a fixed body.
# Started by splitserve as a bring-your-own image; listens on $SAGEMAKER_BIND_TO_PORT.
set -e
dir="$HOME/standin-$SAGEMAKER_BIND_TO_PORT"
mkdir -p "$dir"
cat > "$dir/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path $dir/body;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:$SAGEMAKER_BIND_TO_PORT;
    location = /ping {{ return 200; }}
    location = /invocations {{ default_type text/csv; return 200 "{body}"; }}
  }}
}}
EOF
exec {nginx} -e stderr -p "$dir" -c "$dir/nginx.conf"
"""


def standin_registry(directory: Path, nginx: str) -> Path:
    """Write an image registry (and its start script) registering the nginx stand-in as
    `STANDIN_IMAGE`; return the registry's path (`splitserve serve --images`)."""
    script = directory / "standin-nginx.sh"
    script.write_text(_STANDIN_SCRIPT.format(nginx=nginx, body=STANDIN_BODY.replace("\n", "\\\\n")))
    registry = directory / "images.toml"
    registry.write_text(
        f'[images."{STANDIN_IMAGE}"]\n'
        'command = ["/bin/sh", "{registry_dir}/standin-nginx.sh"]\n'
        "startup_timeout_seconds = 30\n"
    )
    return registry


def plain_gateway_argv(python: str, port: int, upstreams: list[Upstream]) -> list[str]:
    """The command line of the plain aiohttp gateway over `upstreams`."""
    argv = [python, "-m", "benches.plain_gateway", "--port", str(port)]
    for upstream in upstreams:
        argv += ["--variant", f"{upstream.variant}={upstream.weight:g}={upstream.plain()}"]
    return argv


def weights_of(upstreams: list[Upstream]) -> Mapping[str, float]:
    """Variant -> weight."""
    return {upstream.variant: upstream.weight for upstream in upstreams}
