"""One `sub` namespace (RFC 9700 §4.15): a client_id never equals a user's subject, nor
the reverse, whichever is registered first, through the admin API and the CLI. A refused
registration writes no row."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest

from tests.admin_helpers import PASSWORD, admin_api, assert_error, run_cli


@pytest.fixture
def admin(server, db, unique):
    return admin_api(server, db, unique)


def clients_named(db, client_id: str) -> int:
    return db.count("oauth2_clients", "lower(client_id) = lower(:c)", c=client_id)


def users_with(db, subject: str) -> int:
    return db.count("oauth2_users", "lower(subject) = lower(:s)", s=subject)


@pytest.mark.parametrize("case", ["same", "upper"])
def test_admin_api_refuses_a_client_id_equal_to_a_user_subject(admin, db, unique, case):
    user = db.create_user(unique("alice"))
    client_id = user.subject if case == "same" else user.subject.upper()
    clients_before = db.count("oauth2_clients")
    response = admin.post("/clients", {"name": unique("impostor"), "client_id": client_id})
    body = assert_error(response, 409, "client_id")
    assert "subject" in body["error_description"] and "9700" in body["error_description"]
    assert db.count("oauth2_clients") == clients_before
    assert clients_named(db, client_id) == 0


def test_admin_api_refuses_a_user_subject_equal_to_a_client_id(admin, db, unique):
    client_id = unique("svc")
    created = admin.post("/clients", {"name": unique("svc"), "client_id": client_id})
    assert created.status_code == 201, created.text
    users_before = db.count("oauth2_users")
    response = admin.post(
        "/users", {"username": unique("bob"), "password": PASSWORD, "subject": client_id}
    )
    body = assert_error(response, 409, "subject")
    assert "client_id" in body["error_description"]
    assert db.count("oauth2_users") == users_before


def test_admin_api_user_with_chosen_subject_gets_it_in_tokens(admin, server, db, unique):
    subject = unique("legacy-sub")
    response = admin.post(
        "/users", {"username": unique("carol"), "password": PASSWORD, "subject": subject}
    )
    assert response.status_code == 201, response.text
    assert response.json()["subject"] == subject
    assert_error(
        admin.post("/users", {"username": unique("dan"), "password": PASSWORD, "subject": "a b"}),
        400,
        "subject",
    )
    # and a client can no longer take it
    assert_error(admin.post("/clients", {"name": unique("x"), "client_id": subject}), 409)


def test_cli_refuses_a_client_id_equal_to_a_user_subject(db, unique):
    user = db.create_user(unique("erin"))
    result = run_cli(db, "clients", "create", "--name", unique("cli"), "--client-id", user.subject)
    assert result.returncode != 0
    assert "RFC 9700" in result.stderr and "Traceback" not in result.stderr
    assert clients_named(db, user.subject) == 0


def test_cli_refuses_a_user_subject_equal_to_a_client_id(db, unique):
    client_id, _ = db.create_client(name=unique("svc"))
    result = run_cli(
        db,
        "users",
        "create",
        "--username",
        unique("frank"),
        "--subject",
        client_id,
        "--password",
        PASSWORD,
    )
    assert result.returncode != 0
    assert "RFC 9700" in result.stderr and "Traceback" not in result.stderr
    assert users_with(db, client_id) == 0


def test_client_credentials_sub_is_never_a_users(admin, server, db, unique):
    """The point of the rule: a client_credentials token's `sub` (its client_id) is never
    the `sub` of a user's token."""
    user = db.create_user(unique("gina"))
    response = admin.post("/clients", {"name": unique("svc"), "client_id": user.subject})
    assert response.status_code == 409
    client_id, secret = db.create_client(name=unique("svc2"))
    claims = jwt.decode(
        server.client_credentials_token(client_id, secret), options={"verify_signature": False}
    )
    assert users_with(db, claims["sub"]) == 0


def test_concurrent_client_and_user_registrations_cannot_both_take_an_identifier(
    start_server, db, unique
):
    """The check and the insert run under one namespace lock (advisory lock on PostgreSQL,
    the write lock on SQLite): of clients and users registered at the same moment with the
    same identifier, on two workers, exactly one succeeds and the others get 409 (not a
    unique-index 500)."""
    live = start_server(OAUTH2_WORKERS="2")
    admin = admin_api(live, db, unique)
    for _ in range(10):
        identifier = unique("race")

        def as_client(identifier: str = identifier) -> int:
            return admin.post(
                "/clients", {"name": unique("rc"), "client_id": identifier}
            ).status_code

        def as_user(identifier: str = identifier) -> int:
            return admin.post(
                "/users",
                {"username": unique("ru"), "password": PASSWORD, "subject": identifier},
            ).status_code

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(call) for call in (as_client, as_user) * 3]
            statuses = sorted(f.result() for f in futures)
        assert statuses == [201] + [409] * 5, statuses
        assert clients_named(db, identifier) + users_with(db, identifier) == 1
