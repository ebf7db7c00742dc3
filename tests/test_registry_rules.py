"""One service per resource (`oauth2_server.registry`): the admin API and the command
line apply the same rules, because both call the same functions. Each rule is driven
through the real admin API over HTTP and through the real `oauth2-server` command, in
both orders, and both paths must refuse the same thing with the same field."""

from __future__ import annotations

import pytest

from tests.admin_helpers import PASSWORD, admin_api, run_cli

CONFLICT, INVALID = 4, 2  # README "Exit statuses"


@pytest.fixture
def admin(server, db, unique):
    return admin_api(server, db, unique)


def _cli_user(db, username):
    return run_cli(db, "users", "create", "--username", username, "--password", PASSWORD)


def _api_user(admin, username):
    return admin.post("/users", {"username": username, "password": PASSWORD})


def _assert_refused(result, status, field):
    """`result` is an HTTP response or a finished CLI process; both name `field`."""
    if hasattr(result, "status_code"):
        assert result.status_code == {CONFLICT: 409, INVALID: 400}[status], result.text
        assert result.json()["field"] == field, result.text
    else:
        assert result.returncode == status, result.stderr
        assert f"oauth2-server: {field}:" in result.stderr, result.stderr


@pytest.mark.parametrize("first", ["api", "cli"])
def test_usernames_differing_only_in_case_are_one_name_on_both_paths(admin, db, unique, first):
    name = unique("Alice")
    creators = {"api": lambda n: _api_user(admin, n), "cli": lambda n: _cli_user(db, n)}
    second = "cli" if first == "api" else "api"
    made = creators[first](name)
    assert getattr(made, "status_code", 201) == 201 and getattr(made, "returncode", 0) == 0
    _assert_refused(creators[second](name.lower()), CONFLICT, "username")
    assert db.count("oauth2_users", "lower(username) = :u", u=name.lower()) == 1


@pytest.mark.parametrize("first", ["api", "cli"])
def test_client_names_are_unique_ignoring_case_on_both_paths(admin, db, unique, first):
    name = unique("Billing")
    creators = {
        "api": lambda n: admin.post("/clients", {"name": n}),
        "cli": lambda n: run_cli(db, "clients", "create", "--name", n),
    }
    second = "cli" if first == "api" else "api"
    made = creators[first](name)
    assert getattr(made, "status_code", 201) == 201 and getattr(made, "returncode", 0) == 0
    _assert_refused(creators[second](name.upper()), CONFLICT, "name")
    assert db.count("oauth2_clients", "lower(name) = :n", n=name.lower()) == 1


def test_scope_characters_rfc_6749_forbids_are_refused_on_both_paths(admin, db, unique):
    """RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ); `"` and `\\` are out."""
    before = db.count("oauth2_clients")
    for scope in ('read "write"', "read wr\\ite"):
        api = admin.post("/clients", {"name": unique("scoped"), "scope": scope})
        _assert_refused(api, INVALID, "scope")
        cli = run_cli(db, "clients", "create", "--name", unique("scoped"), "--scope", scope)
        _assert_refused(cli, INVALID, "scope")
    assert db.count("oauth2_clients") == before


@pytest.mark.parametrize("first", ["api", "cli"])
def test_a_branch_id_is_taken_whichever_path_created_it(admin, db, unique, first):
    branch = unique("branch")
    creators = {
        "api": lambda: admin.post("/branches", {"branch_id": branch, "name": "B"}),
        "cli": lambda: run_cli(db, "branches", "create", branch, "--name", "B"),
    }
    second = "cli" if first == "api" else "api"
    made = creators[first]()
    assert getattr(made, "status_code", 201) == 201 and getattr(made, "returncode", 0) == 0
    _assert_refused(creators[second](), CONFLICT, "branch_id")
    assert db.count("oauth2_branches", "branch_id = :b", b=branch) == 1
