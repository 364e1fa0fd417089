#!/bin/sh
# Print the interpreter the Makefile builds .venv with (PYTHON= overrides it there):
# - the one the virtualenv given as $1 was built with, when it exists and runs, so a set-up tree
#   keeps its interpreter (and its build) until `make clean`;
# - else the newest CPython from 3.11 to 3.13 that runs, among python3.13, python3.12 and
#   python3.11 on PATH and pyenv's ~/.pyenv/versions/3.1[123].*/bin/python3 (a pyenv shim of a
#   version that is not selected is on PATH but does not run, hence "that runs"). 3.14 and later
#   are left out until constraints.txt is checked on them;
# - else python3, for the Makefile to report.
venv=${1:-.venv}
if "$venv/bin/python" -c '' 2>/dev/null; then
    "$venv/bin/python" -c 'import os, sys; print(os.path.realpath(sys.executable))'
    exit 0
fi
best= best_version=0
for candidate in python3.13 python3.12 python3.11 "$HOME"/.pyenv/versions/3.1[123].*/bin/python3; do
    # 31307 for 3.13.7; free-threaded builds (abiflags "t") are left out: not every wheel has one.
    version=$("$candidate" -c 'import sys
ok = sys.implementation.name == "cpython" and (3, 11) <= sys.version_info[:2] <= (3, 13)
ok = ok and "t" not in getattr(sys, "abiflags", "")
print(sys.version_info[0] * 10000 + sys.version_info[1] * 100 + sys.version_info[2] if ok else 0)' 2>/dev/null) || continue
    if [ "${version:-0}" -gt "$best_version" ]; then
        best=$("$candidate" -c 'import os, sys; print(os.path.realpath(sys.executable))')
        best_version=$version
    fi
done
echo "${best:-python3}"
