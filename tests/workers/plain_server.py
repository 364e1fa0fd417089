"""A contract server on the standard library only, so any Python can run it (the system's, as an
unprivileged user who cannot reach the test's own interpreter).

GET /ping answers 200; GET /info answers JSON: uid, gid, groups, the NoNewPrivs flag, HOME,
TMPDIR, whether TMPDIR is writable, whether the model directory is readable, its pid and the
CPUs it may run on. It listens on $SAGEMAKER_BIND_TO_PORT of the address given as its argument
(a registry command's `{host}`), 127.0.0.1 without one.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path


def _info() -> dict[str, object]:
    status = Path("/proc/self/status").read_text()
    no_new_privs = next(
        line.split()[1] for line in status.splitlines() if line.startswith("NoNewPrivs:")
    )
    try:
        with tempfile.NamedTemporaryFile(dir=os.environ["TMPDIR"]):
            tmpdir_writable = True
    except OSError:
        tmpdir_writable = False
    model_dir = Path(os.environ["SM_MODEL_DIR"])
    return {
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "no_new_privs": no_new_privs,
        "home": os.environ["HOME"],
        "tmpdir": os.environ["TMPDIR"],
        "tmpdir_writable": tmpdir_writable,
        "model_files": sorted(path.name for path in model_dir.iterdir()),
        "model_text": (model_dir / "model.json").read_text(),
        "pid": os.getpid(),
        "cpus": sorted(os.sched_getaffinity(0)),
    }


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b""
        if self.path == "/info":
            body = json.dumps(_info()).encode()
        elif self.path != "/ping":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


if __name__ == "__main__":
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    HTTPServer((host, int(os.environ["SAGEMAKER_BIND_TO_PORT"])), _Handler).serve_forever()
