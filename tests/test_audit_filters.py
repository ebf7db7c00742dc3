"""Finding audit rows without SQL (issue #11 item 4, in part): what a change is about
(`target_client_id`), a grant (`family_id`), a token (`token_id`), a request
(`request_id`), and times relative to now (`since=-1h`). Every answer equals a direct SQL
count; bad values are a 400 naming the parameter (CLI: exit 2)."""

from __future__ import annotations

import ipaddress
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.admin_helpers import PASSWORD, admin_api, assert_error, event, insert_log_rows, run_cli

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


def _direct_ids(db, where: str, **params) -> list[int]:
    rows = db.rows(
        f"SELECT id FROM oauth2_token_logs WHERE {where} ORDER BY created_at, id",  # noqa: S608
        **params,
    )
    return [row.id for row in rows]


def test_target_subject_and_branch_are_what_the_row_is_about(admin, db, unique) -> None:
    """An admin change to a user: the admin acts (`client_id`), the user is the target;
    the same for a branch. Each answer equals a direct SQL count."""
    created = admin.post("/users", {"username": unique("target-user"), "password": PASSWORD})
    assert created.status_code == 201, created.text
    subject = created.json()["subject"]
    assert admin.patch(f"/users/{subject}", {"active": False}).status_code == 200
    branch = unique("target-branch")
    now = datetime.now(UTC)
    insert_log_rows(
        db,
        [
            event("admin_branch_updated", now, client_id=admin.client_id, branch_id=branch),
            event("upstream_linked", now, branch_id=branch),
        ],
    )
    about_user = _ids(admin, target_subject=subject)
    assert about_user == _direct_ids(db, "subject = :s", s=subject)
    assert len(about_user) == 2  # created, deactivated
    assert _ids(admin, target_subject=subject, client_id=admin.client_id) == about_user
    about_branch = _ids(admin, target_branch_id=branch)
    assert about_branch == _direct_ids(db, "branch_id = :b", b=branch)
    assert len(about_branch) == 2
    assert _ids(admin, target_branch_id=branch, action="upstream_linked") == about_branch[1:]


IPS = [
    "10.1.2.3", "10.1.200.4", "10.2.0.1", "192.168.1.1", "11.1.2.3",
    "2001:db8::5", "2001:db8:1::5", "2001:dead::1", "::ffff:10.1.2.3",
    "not-an-address", "10.1.2.3/32", "10.1.2.0/24", None,
]  # fmt: skip


@pytest.mark.parametrize(
    "network",
    ["10.1.0.0/16", "10.1.2.0/24", "10.0.0.0/8", "0.0.0.0/0", "2001:db8::/32",
     "2001:db8::/48", "::/0", "10.1.2.3/32", "10.1.2.3"],
)  # fmt: skip
def test_ip_cidr_matches_exactly_the_addresses_inside(admin, db, unique, network) -> None:
    """The API and the CLI return the rows whose address is inside the network, as
    Python's `ipaddress` decides over a direct SQL read (text that is not an address,
    and addresses of the other IP version, never match)."""
    client = unique("cidr")
    now = datetime.now(UTC)
    insert_log_rows(db, [event("issued", now, client_id=client, ip=ip) for ip in IPS])
    rows = db.rows(
        "SELECT id, ip FROM oauth2_token_logs WHERE client_id = :c ORDER BY created_at, id",
        c=client,
    )
    inside = ipaddress.ip_network(network)
    expected = [row.id for row in rows if (address := _address(row.ip)) and address in inside]
    assert expected  # every network above holds at least one planted address
    assert _ids(admin, client_id=client, ip=network) == expected
    counted = admin.get(
        "/audit/summary", params={"client_id": client, "ip": network, "group_by": "client_id"}
    )
    assert counted.status_code == 200, counted.text
    assert counted.json()["total"] == len(expected)
    result = run_cli(db, "audit", "query", "--client-id", client, "--ip", network)
    assert result.returncode == 0, result.stderr
    assert [item["id"] for item in json.loads(result.stdout)["items"]] == expected


def _address(text_ip):
    try:
        return ipaddress.ip_address(text_ip)
    except (TypeError, ValueError):
        return None


@pytest.mark.parametrize(
    "value",
    ["10.0.0.1/8", "10.0.0.0/33", "2001:db8::1/32", "2001:db8::/129", "10.0.0.0/x",
     "host/8", "10.0.0.0/", "/8", "10.0.0.0/8/8", "1" * 70],
)  # fmt: skip
def test_a_bad_network_is_a_400_naming_ip(admin, db, value) -> None:
    response = admin.get("/audit", params={"ip": value})
    assert_error(response, 400, "ip")
    if value == "10.0.0.1/8":  # host bits set: refused, not widened; the answer says why
        assert "10.0.0.0/8" in response.json()["error_description"]
    refused = run_cli(db, "audit", "query", "--ip", value)
    assert refused.returncode == 2 and "ip" in refused.stderr
