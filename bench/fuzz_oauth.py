"""Seeded random hostile requests against the OAuth endpoints: zero 5xx expected.

    python bench/fuzz_oauth.py                      # 3000 requests, scratch SQLite server
    python bench/fuzz_oauth.py --count 20000 --seed 7 \\
        --database-url postgresql://postgres@127.0.0.1:5432/oauth2_fuzz   # scratch PG db

Issue #8 "Done when" (DESIGN.md invariant 8: no input, however long, malformed or hostile,
produces a 5xx, a traceback or a `text/plain` answer on an OAuth or admin path). Each
request picks an endpoint (token, introspection, revocation, authorize GET/POST, JWKS,
metadata, the upstream callback; sometimes with a wrong method) and fills it from a
palette of hostile parts: NUL and other control characters, non-UTF-8 bytes and broken
percent-escapes, lone surrogates, huge values (up to 70,000 characters), repeated
parameters, odd content types, broken HTTP Basic credentials (empty, not base64, NUL or
non-UTF-8 inside, 10 KB client ids), JWTs whose header members have the wrong JSON type,
junk cookies, request ids and forwarded-for headers. Some authorize POSTs first fetch a
real login page so they pass the CSRF check and reach the login and consent code.

A response fails the run when its status is 5xx, or when an error on a JSON endpoint is
not JSON. Requests that are not valid HTTP/1.1 (control characters in a header value, a
request line uvicorn cannot parse) never reach the application: uvicorn's parser answers
them with its own `400 Invalid HTTP request received.` (and 431 for oversized headers),
recognisable by the missing `X-Request-ID` that every application answer carries; they
are counted apart as "refused by the HTTP parser", not as failures (a 5xx always fails). The run is
bounded by `--count` (and `--seconds`). Prints a summary (requests, statuses, failures)
and the server log's traceback count; exits 1 on any failure.
The same generator runs in tests/test_hostile_input.py at a small count.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.flows import form_fields  # noqa: E402

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"

ENDPOINTS = [
    ("POST", "/oauth2/token"),
    ("POST", "/oauth2/token"),
    ("POST", "/oauth2/introspect"),
    ("POST", "/introspect"),
    ("POST", "/oauth2/revoke"),
    ("GET", "/oauth2/authorize"),
    ("POST", "/oauth2/authorize"),
    ("GET", "/oauth2/jwks"),
    ("GET", "/.well-known/oauth-authorization-server"),
    ("GET", "/upstream/google/callback"),
    ("GET", "/upstream/n%00pe/callback"),
]
JSON_PATHS = {
    "/oauth2/token",
    "/oauth2/introspect",
    "/introspect",
    "/oauth2/revoke",
    "/oauth2/jwks",
    "/.well-known/oauth-authorization-server",
}
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
NAMES = [
    "grant_type",
    "client_id",
    "client_secret",
    "scope",
    "code",
    "redirect_uri",
    "code_verifier",
    "refresh_token",
    "token",
    "token_type_hint",
    "subject_token",
    "subject_token_type",
    "requested_token_type",
    "audience",
    "resource",
    "branch_id",
    "actor_token",
    "response_type",
    "state",
    "code_challenge",
    "code_challenge_method",
    "prompt",
    "action",
    "username",
    "password",
    "decision",
    "csrf_token",
    "error",
    "error_description",
]
HOSTILE = [
    "",
    "\x00",
    "a\x00b",
    "\t\r\n",
    "\x1b[31m",
    "\x7f",
    "é",
    "😀",
    "\u202e\ufeff",
    '"\\',
    "'; DROP TABLE oauth2_clients; --",
    "%00",
    "%ff",
    "../../etc/passwd",
    "{{7*7}}<script>",
    "http://127.0.0.1:9/c\\b",
    'http://127.0.0.1:9/"é',
    "a b",
    "=&=&",
    "-1",
    "99999999999999999999999",
    "null",
]


@dataclass(frozen=True)
class FuzzTarget:
    """A live server and a registered confidential client with an exact redirect URI."""

    base_url: str
    client_id: str
    client_secret: str
    redirect_uri: str


@dataclass
class Report:
    """What a run saw: status counts, and one line per failing request."""

    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    parser_refused: int = 0  # answered by uvicorn's HTTP parser, not the application

    def summary(self) -> str:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        lines = [
            f"requests: {self.sent} in {self.seconds:.1f} s",
            f"statuses: {statuses}",
            f"5xx: {sum(v for k, v in self.statuses.items() if k >= 500)}",
            f"refused by the HTTP parser (not valid HTTP/1.1): {self.parser_refused}",
            f"failures: {len(self.failures)}",
        ]
        return "\n".join(lines + [f"  {line}" for line in self.failures[:20]])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _odd_jwt(rng: random.Random) -> str:
    odd = rng.choice([5, None, True, [], {}, ["at+jwt"], "at+jwt", "x" * 300, "\x00"])
    header = {"alg": rng.choice(["ES256", "none", "HS256", 1]), "typ": odd, "kid": odd}
    payload = {"jti": odd, "sub": odd, "exp": odd, "client_id": odd}
    return ".".join([_b64(json.dumps(header).encode()), _b64(json.dumps(payload).encode()), "c2ln"])


def _value(rng: random.Random, target: FuzzTarget) -> str | bytes:
    """One parameter value: plausible, hostile, huge, or raw bytes (sent unencoded)."""
    pick = rng.random()
    if pick < 0.3:
        return rng.choice(
            [
                target.client_id,
                target.client_secret,
                target.redirect_uri,
                "client_credentials",
                "authorization_code",
                "refresh_token",
                TOKEN_EXCHANGE,
                ACCESS_TOKEN_TYPE,
                "code",
                "S256",
                "plain",
                "read",
                "google",
                "login",
                "consent",
                "approve",
                "access_token",
            ]
        )
    if pick < 0.6:
        return rng.choice(HOSTILE)
    if pick < 0.7:
        return _odd_jwt(rng)
    if pick < 0.8:
        return rng.choice('aé\x00"\\%&=+') * rng.choice([65, 101, 1000, 10_000, 70_000])
    # raw bytes: non-UTF-8, broken escapes, a lone surrogate's UTF-8-ish encoding
    return rng.choice([b"\xff\xfe", b"%ed%a0%80", b"%", b"%zz", b"\xc3", b"%c3%28", b"a=b=c"])


def _encode_pairs(pairs: list[tuple[str, str | bytes]]) -> bytes:
    parts = []
    for name, value in pairs:
        encoded_value = value if isinstance(value, bytes) else quote(value, safe="").encode()
        parts.append(quote(name, safe="").encode() + b"=" + encoded_value)
    return b"&".join(parts)


def _params(rng: random.Random, target: FuzzTarget) -> list[tuple[str, str | bytes]]:
    pairs: list[tuple[str, str | bytes]] = []
    for _ in range(rng.choice([0, 1, 2, 3, 5, 8])):
        name = rng.choice(NAMES) if rng.random() < 0.85 else rng.choice(HOSTILE) or "x"
        pairs.append((name, _value(rng, target)))
    if pairs and rng.random() < 0.15:
        pairs.append(rng.choice(pairs))  # a repeated parameter
    if rng.random() < 0.05:
        pairs = [(f"p{i}", "v") for i in range(rng.choice([101, 1000]))]  # too many
    return pairs


def _authorization(rng: random.Random, target: FuzzTarget) -> str | None:
    choice = rng.randrange(12)
    good = f"{target.client_id}:{target.client_secret}".encode()
    options: list[str | None] = [
        None,
        None,
        "Basic " + base64.b64encode(good).decode(),
        "Basic " + base64.b64encode(f"{target.client_id}:wrong".encode()).decode(),
        "Basic ",
        "Basic !!!not base64",
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
        "Basic " + base64.b64encode(b"a\x00b:c\x00d").decode(),
        "Basic " + base64.b64encode(b"x" * 10_000 + b":y").decode(),
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Bearer " + _odd_jwt(rng),
        "Digest é",
    ]
    return options[choice]


def _headers(rng: random.Random, target: FuzzTarget) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    auth = _authorization(rng, target)
    if auth is not None:
        headers["Authorization"] = auth.encode("utf-8")
    headers["Content-Type"] = rng.choice(
        [
            "application/x-www-form-urlencoded",
            "application/x-www-form-urlencoded",
            "application/x-www-form-urlencoded; charset=latin-1",
            "application/json",
            "multipart/form-data; boundary=x",
            "text/plain",
            "",
            "application/x-www-form-urlencoded\t; é",
        ]
    ).encode("utf-8")
    if rng.random() < 0.2:
        headers["X-Request-ID"] = rng.choice(["é" * 100, "x" * 5000, "\x01", "ok-id"]).encode()
    if rng.random() < 0.2:
        headers["X-Forwarded-For"] = rng.choice(["1" * 300, "é, \x01", "::1, 10.0.0.1"]).encode()
    if rng.random() < 0.2:
        headers["Cookie"] = rng.choice(
            ["oauth2_session=" + "A" * 4000, "oauth2_session=é", "oauth2_device=..."]
        ).encode()
    if rng.random() < 0.2:
        headers["Accept"] = "application/json"
    return headers


def _login_page(target: FuzzTarget, session: requests.Session) -> dict[str, str] | None:
    """A real login page's form fields (CSRF token) in `session`, or None."""
    page = session.get(
        target.base_url + "/oauth2/authorize",
        params={
            "response_type": "code",
            "client_id": target.client_id,
            "redirect_uri": target.redirect_uri,
            "scope": "read",
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "code_challenge_method": "S256",
        },
        timeout=30,
    )
    if page.status_code != 200 or "<form" not in page.text:
        return None
    return form_fields(page.text)[1]


def _check(method: str, path: str, response: requests.Response) -> str | None:
    status = response.status_code
    content_type = response.headers.get("content-type", "")
    if status >= 500:
        return f"{method} {path} -> {status} {content_type}: {response.text[:200]!r}"
    json_expected = status >= 400 and path in JSON_PATHS and method != "HEAD"
    if json_expected and not content_type.startswith("application/json"):
        return f"{method} {path} -> {status} not JSON ({content_type})"
    if content_type.startswith("text/plain"):
        return f"{method} {path} -> {status} text/plain: {response.text[:200]!r}"
    return None


def run_fuzz(target: FuzzTarget, count: int, seed: int = 0, seconds: float | None = None) -> Report:
    """Send `count` seeded random requests (stopping after `seconds` if given)."""
    rng = random.Random(seed)
    report = Report()
    started = time.monotonic()
    session = requests.Session()
    for _ in range(count):
        if seconds is not None and time.monotonic() - started > seconds:
            break
        method, path = rng.choice(ENDPOINTS)
        if rng.random() < 0.08:
            method = rng.choice(METHODS)
        pairs = _params(rng, target)
        headers = _headers(rng, target)
        query = b""
        body: bytes | None = None
        browser = session
        if path == "/oauth2/authorize" and method == "POST" and rng.random() < 0.5:
            browser = requests.Session()
            fields = _login_page(target, browser)
            if fields is not None:
                pairs = [*fields.items(), *pairs]  # the real CSRF token, then hostile ones
                headers["Content-Type"] = b"application/x-www-form-urlencoded"
                headers.pop("Cookie", None)
                query = _encode_pairs(
                    [
                        ("response_type", "code"),
                        ("client_id", target.client_id),
                        ("redirect_uri", target.redirect_uri),
                        ("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"),
                        ("code_challenge_method", "S256"),
                    ]
                )
        encoded = _encode_pairs(pairs)
        if method in {"GET", "HEAD", "OPTIONS", "DELETE"} and not query:
            query = encoded
        else:
            body = encoded
        url = target.base_url + path + ("?" + query.decode("latin-1") if query else "")
        try:
            response = browser.request(
                method, url, data=body, headers=headers, timeout=60, allow_redirects=False
            )
        except requests.RequestException as exc:
            report.failures.append(f"{method} {path} -> {type(exc).__name__}: {exc}"[:300])
            continue
        finally:
            report.sent += 1
        report.statuses[response.status_code] += 1
        if response.status_code < 500 and "x-request-id" not in response.headers:
            report.parser_refused += 1  # uvicorn answered: the application never saw it
            continue
        problem = _check(method, path, response)
        if problem is not None:
            report.failures.append(problem)
    report.seconds = time.monotonic() - started
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=600.0, help="stop after this long")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", help="scratch database (its schema is dropped)")
    args = parser.parse_args()

    from bench.fuzz_server import scratch_server
    from tests.flows import REDIRECT_URI

    with scratch_server(args.database_url) as live:
        client_id, secret = live.db.create_client(
            grant_types=["authorization_code", "client_credentials", "refresh_token"],
            redirect_uris=[REDIRECT_URI],
            scope="read",
        )
        live.db.create_user("fuzz-user", "correct horse battery")
        target = FuzzTarget(live.base_url, client_id, secret or "", REDIRECT_URI)
        report = run_fuzz(target, args.count, args.seed, args.seconds)
        alive = requests.get(live.url("/healthz"), timeout=30).status_code
        log = live.log()
    print(f"fuzz_oauth: backend {live.db.backend}, seed {args.seed}")
    print(report.summary())
    print(f"server still answering: /healthz {alive}")
    print(f"tracebacks in server log: {log.count('Traceback')}")
    failed = report.failures or alive != 200 or "Traceback" in log
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
