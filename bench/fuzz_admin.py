"""Schemathesis against the admin API's own OpenAPI document: zero 5xx expected.

    pip install -e '.[fuzz]'                       # schemathesis (not needed by the tests)
    python bench/fuzz_admin.py                     # scratch SQLite server, 60 examples/op
    python bench/fuzz_admin.py --max-examples 300 --max-time 900 \\
        --database-url postgresql://postgres@127.0.0.1:5432/oauth2_fuzz   # scratch PG db

Issue #8 "Done when": a schemathesis run against `/admin/openapi.json` of a live server
finds no 5xx (DESIGN.md invariant 8). It starts a scratch server (bench/fuzz_server.py),
registers an admin client, and runs `st run` with an admin bearer token and the
`not_a_server_error` check, NUL bytes allowed in generated strings, every phase
(examples, coverage, fuzzing, stateful) bounded by `--max-examples` per operation and
`--max-time` seconds. `POST /admin/tokens/revoke` runs in a second pass of its own, since
it may revoke the run's own admin token. Prints schemathesis's summary, the server's 5xx
count (from its access log) and traceback count; exits non-zero on any 5xx.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.fuzz_server import scratch_server  # noqa: E402

REVOKE = "/admin/tokens/revoke"
SERVER_ERROR = re.compile(r'" 5\d\d ')


def schemathesis() -> str:
    found = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if found is None:
        sys.exit("schemathesis is not installed: pip install -e '.[fuzz]'")
    return found


def st_run(base_url: str, token: str, args: argparse.Namespace, *selection: str) -> int:
    """One `st run` over the operations `selection` picks; its exit code."""
    command = [
        schemathesis(),
        "run",
        f"{base_url}/admin/openapi.json",
        "--url",
        base_url,
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(args.max_examples),
        "--max-time",
        str(args.max_time),
        "--seed",
        str(args.seed),
        "--generation-allow-x00",
        "true",
        "--workers",
        "2",
        "--request-timeout",
        "30",
        "--no-color",
        "--output-sanitize",
        "true",
        *selection,
    ]
    print("$ st run … " + " ".join(selection), flush=True)
    return subprocess.run(command, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=60, help="per operation")
    parser.add_argument("--max-time", type=int, default=300, help="seconds per pass")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", help="scratch database (its schema is dropped)")
    args = parser.parse_args()

    with scratch_server(args.database_url) as live:
        admin_id, admin_secret = live.db.create_client(scope="admin")
        assert admin_secret is not None
        token = live.client_credentials_token(admin_id, admin_secret, scope="admin")
        main_pass = st_run(live.base_url, token, args, "--exclude-path", REVOKE)
        revoke_pass = st_run(live.base_url, token, args, "--include-path", REVOKE)
        log = live.log()
    server_errors = [line for line in log.splitlines() if SERVER_ERROR.search(line)]
    print(f"fuzz_admin: backend {live.db.backend}, seed {args.seed}")
    print(f"schemathesis exit codes: {main_pass} (all but {REVOKE}), {revoke_pass} ({REVOKE})")
    print(f"5xx answered by the server (access log): {len(server_errors)}")
    for line in server_errors[:20]:
        print(f"  {line}")
    print(f"tracebacks in server log: {log.count('Traceback')}")
    return 1 if server_errors or main_pass or revoke_pass or "Traceback" in log else 0


if __name__ == "__main__":
    sys.exit(main())
