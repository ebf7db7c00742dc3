"""Finding audit rows without SQL (issue #11 item 4, in part): what a change is about
(`target_client_id`), a grant (`family_id`), a token (`token_id`), a request
(`request_id`), and times relative to now (`since=-1h`). Every answer equals a direct SQL
count; bad values are a 400 naming the parameter (CLI: exit 2)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.admin_helpers import admin_api, assert_error, event, insert_log_rows, run_cli

BASE = datetime(2034, 2, 3, tzinfo=UTC)


@pytest.fixture
def admin(server, db, unique):
    return admin_api(server, db, unique)


def _ids(admin, **params) -> list[int]:
    page = admin.get("/audit", params={**params, "limit": "1000"})
    assert page.status_code == 200, page.text
    return [item["id"] for item in page.json()["items"]]


def test_every_change_to_a_client_is_found_by_target_client_id(admin, db, unique) -> None:
    """The admin client acts (`client_id`); the client changed is the target."""
    created = admin.post(
        "/clients", {"name": unique("target"), "grant_types": ["client_credentials"]}
    )
    assert created.status_code == 201, created.text
    target = created.json()["client_id"]
    assert admin.patch(f"/clients/{target}", {"scope": "read write"}).status_code == 200
    assert admin.post(f"/clients/{target}/secret").status_code == 200
    with db.engine.connect() as connection:
        expected = [
            row.id
            for row in connection.execute(
                text(
                    "SELECT id, details FROM oauth2_token_logs WHERE action LIKE 'admin_client%'"
                    " ORDER BY created_at, id"
                )
            )
            if target in str(row.details)
        ]
    assert len(expected) == 3
    assert _ids(admin, target_client_id=target) == expected
    assert _ids(admin, client_id=target) == []  # the actor is the admin client
    assert _ids(admin, target_client_id=target, action="admin_client_updated") == expected[1:2]


def test_grant_token_and_request_filters_match_exactly(admin, db, unique) -> None:
    family, token, request = unique("fam")[:36], unique("jti")[:64], unique("req")[:64]
    client = unique("filters")
    ids = insert_log_rows(
        db,
        [
            event("issued", BASE, client_id=client, token_id=token, details={"family_id": family}),
            event(
                "refreshed",
                BASE + timedelta(seconds=1),
                client_id=client,
                details={"family_id": family},
            ),
            event("introspected", BASE + timedelta(seconds=2), client_id=client, token_id=token),
            event("issued", BASE + timedelta(seconds=3), client_id=client),
        ],
    )
    with db.engine.begin() as connection:  # as the request-id middleware would have set it
        connection.execute(
            text("UPDATE oauth2_token_logs SET request_id = :r WHERE id = :id"),
            {"r": request, "id": ids[3]},
        )
    assert _ids(admin, family_id=family) == ids[:2]
    assert _ids(admin, token_id=token) == [ids[0], ids[2]]
    assert _ids(admin, request_id=request) == [ids[3]]
    assert _ids(admin, token_id=token, action="introspected") == [ids[2]]


def test_since_relative_to_now(admin, db, unique) -> None:
    """`-1h` is an hour before the server's now. Rows are written at the current time
    (rows backdated inside the sealed range would break the hash chain's completeness
    check, as late writers do)."""
    client = unique("relative")
    (row,) = insert_log_rows(db, [event("issued", datetime.now(UTC), client_id=client)])
    assert _ids(admin, client_id=client, since="-1h") == [row]
    assert _ids(admin, client_id=client, since="-1d", until="-1h") == []
    time.sleep(2.1)
    assert _ids(admin, client_id=client, since="-2s") == []
    assert _ids(admin, client_id=client, since="-90s") == [row]
    reversed_range = admin.get("/audit", params={"since": "-30m", "until": "-1h"})
    assert_error(reversed_range, 400, "until")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("token_id", "j" * 65, id="token-id-too-long"),
        pytest.param("request_id", "r" * 65, id="request-id-too-long"),
        pytest.param("family_id", "f" * 65, id="family-id-too-long"),
        pytest.param("target_client_id", "c" * 201, id="target-too-long"),
        pytest.param("since", "-1w", id="unknown-unit"),
        pytest.param("since", "-99999999d", id="too-far-back"),
    ],
)
def test_bad_filter_values_are_a_400_naming_the_parameter(admin, name, value) -> None:
    assert_error(admin.get("/audit", params={name: value}), 400, name)


def test_the_cli_has_the_same_filters(db, unique) -> None:
    client, token = unique("cli-filters"), unique("cli-jti")[:64]
    now = datetime.now(UTC)  # current rows only (see test_since_relative_to_now)
    ids = insert_log_rows(
        db,
        [
            event("issued", now, client_id=client, token_id=token),
            event("issued", now, client_id=client),
        ],
    )
    result = run_cli(
        db, "audit", "query", "--token-id", token, "--since=-1h", "--client-id", client
    )
    assert result.returncode == 0, result.stderr
    assert [item["id"] for item in json.loads(result.stdout)["items"]] == ids[:1]
    refused = run_cli(db, "audit", "query", "--since=-5y")
    assert refused.returncode == 2 and "since" in refused.stderr
