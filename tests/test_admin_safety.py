"""Admin safety (issue #8 item 6): the admin API and the CLI never remove the last way
in. An admin client cannot delete or deactivate itself, and the last active client with
scope `admin` cannot be deleted, deactivated or lose that scope: 409 JSON over HTTP, a
one-line error and a non-zero exit from the CLI. The rule holds under concurrency: two
admins deactivating each other at once cannot both succeed (the admin clients' rows are
locked, `storage.client_registry.lock_active_admin_clients`)."""

from __future__ import annotations

import threading

import pytest

from tests.admin_helpers import admin_api, assert_error, execute, run_cli


def active_admins(db):
    return sorted(
        client_id
        for client_id, scope in db.rows(
            "SELECT client_id, scope FROM oauth2_clients WHERE active = :t", t=True
        )
        if "admin" in scope.split()
    )


@pytest.fixture
def only_admins(server, db, unique):
    """Two admin API clients, A and B, made the only active admin clients of the
    database (every other admin client is deactivated first; tests that need one make
    their own)."""

    def make(count: int = 2):
        admins = [admin_api(server, db, unique) for _ in range(count)]
        keep = [a.client_id for a in admins]
        for client_id in active_admins(db):
            if client_id not in keep:
                execute(
                    db,
                    "UPDATE oauth2_clients SET active = :f WHERE client_id = :c",
                    f=False,
                    c=client_id,
                )
        assert active_admins(db) == sorted(keep)
        return admins

    return make


def test_an_admin_client_cannot_delete_or_deactivate_itself(server, db, unique):
    admin = admin_api(server, db, unique)
    admin_api(server, db, unique)  # another admin exists: only the self rule applies
    body = assert_error(admin.delete(f"/clients/{admin.client_id}"), 409, "client_id")
    assert "itself" in body["error_description"]
    body = assert_error(
        admin.patch(f"/clients/{admin.client_id}", {"active": False}), 409, "client_id"
    )
    assert "itself" in body["error_description"]
    assert db.scalar(
        "SELECT active FROM oauth2_clients WHERE client_id = :c", c=admin.client_id
    ) in (True, 1)
    assert admin.get(f"/clients/{admin.client_id}").status_code == 200  # token still works


def test_the_last_active_admin_client_cannot_be_removed(server, db, only_admins):
    a, b = only_admins(2)
    # A may deactivate B while A remains ...
    response = a.patch(f"/clients/{b.client_id}", {"active": False})
    assert response.status_code == 200, response.text
    # ... but then A is the last admin client: it may not lose scope admin,
    body = assert_error(a.patch(f"/clients/{a.client_id}", {"scope": "read"}), 409, "client_id")
    assert "last active admin client" in body["error_description"]
    # while a scope change that keeps admin is fine
    response = a.patch(f"/clients/{a.client_id}", {"scope": "admin read"})
    assert response.status_code == 200, response.text
    # and the CLI (no calling client) may not delete or deactivate it either
    for args in (
        ("clients", "delete", a.client_id),
        ("clients", "update", a.client_id, "--inactive"),
        ("clients", "update", a.client_id, "--scope", "read"),
    ):
        result = run_cli(db, *args)
        assert result.returncode != 0, result.stdout
        message = result.stderr.strip().splitlines()[-1]  # after any DEBUG log lines
        assert message.startswith("oauth2-server: client_id: "), result.stderr
        assert "last active admin client" in message, message
    assert active_admins(db) == [a.client_id]
    # B back: now the CLI may deactivate A
    execute(db, "UPDATE oauth2_clients SET active = :t WHERE client_id = :c", t=True, c=b.client_id)
    result = run_cli(db, "clients", "update", a.client_id, "--inactive")
    assert result.returncode == 0, result.stderr
    assert active_admins(db) == [b.client_id]


def test_two_admins_deactivating_each_other_at_once_cannot_both_succeed(db, only_admins):
    """Each round: A deactivates B while B deactivates A. Without the row lock both
    transactions see two admin clients and both commit, leaving none (PostgreSQL)."""
    for _round in range(5):
        a, b = only_admins(2)
        barrier = threading.Barrier(2)
        statuses: dict[str, int] = {}

        def deactivate(actor, target, barrier=barrier, statuses=statuses):
            barrier.wait()
            response = actor.patch(f"/clients/{target.client_id}", {"active": False})
            statuses[actor.client_id] = response.status_code

        threads = [
            threading.Thread(target=deactivate, args=(a, b)),
            threading.Thread(target=deactivate, args=(b, a)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # the loser is refused by the rule (409), or never gets that far because the
        # winner's deactivation revoked its token first (401); never both 200
        assert sorted(statuses.values()) in ([200, 401], [200, 409]), statuses
        assert len(active_admins(db)) == 1
