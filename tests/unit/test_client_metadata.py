"""The registry's pure rules for client, user and branch data (no database): what both
the admin API and the command line refuse, and the field each refusal names."""

from __future__ import annotations

import pytest

from oauth2_server.registry.branches import validate_branch_id
from oauth2_server.registry.clients import auth_method, check_metadata, normal_scope
from oauth2_server.registry.errors import FieldInvalid
from oauth2_server.registry.redirect_uris import loopback_host, validate_redirect_uri
from oauth2_server.registry.users import check_password


def _metadata(**changes):
    return {
        "name": "svc",
        "grant_types": ["client_credentials"],
        "redirect_uris": [],
        "scope": "read",
        **changes,
    }


@pytest.mark.parametrize(
    ("changes", "public", "field"),
    [
        ({"name": "  "}, False, "name"),
        ({"grant_types": []}, False, "grant_types"),
        ({"grant_types": ["password"]}, False, "grant_types"),
        ({"grant_types": ["client_credentials"]}, True, "grant_types"),
        ({"grant_types": ["authorization_code"]}, False, "redirect_uris"),
        (
            {"grant_types": ["authorization_code"], "redirect_uris": ["http://a.example/cb"]},
            False,
            "redirect_uris",
        ),
        ({"scope": 'read "write"'}, False, "scope"),
    ],
)
def test_bad_client_metadata_names_the_field(changes, public, field):
    with pytest.raises(FieldInvalid) as refused:
        check_metadata(_metadata(**changes), public)
    assert refused.value.field == field and refused.value.status == 400


def test_good_metadata_passes_and_scope_is_normalised():
    merged = _metadata(scope="read  write read")
    check_metadata(merged, False)
    assert merged["scope"] == "read write"
    assert normal_scope("a b a") == "a b"


@pytest.mark.parametrize(
    ("body", "method"),
    [
        ({}, "client_secret_basic"),
        ({"public": True}, "none"),
        ({"token_endpoint_auth_method": "client_secret_post"}, "client_secret_post"),
    ],
)
def test_auth_method_defaults_by_public(body, method):
    assert auth_method(body) == method


@pytest.mark.parametrize(
    "body",
    [
        {"token_endpoint_auth_method": "client_secret_jwt"},
        {"public": True, "token_endpoint_auth_method": "client_secret_basic"},
        {"token_endpoint_auth_method": "none"},
    ],
)
def test_auth_method_refuses_unknown_or_contradicting(body):
    with pytest.raises(FieldInvalid) as refused:
        auth_method(body)
    assert refused.value.field == "token_endpoint_auth_method"


@pytest.mark.parametrize(
    ("uri", "ok"),
    [
        ("https://app.example/cb", True),
        ("http://127.0.0.1:8080/cb", True),
        ("http://[::1]/cb", True),
        ("com.example.app:/oauth/cb", True),
        ("http://localhost/cb", False),
        ("https://app.example/cb#frag", False),
        ("myapp:/cb", False),
        ("HTTPS://app.example/cb", False),
        ("https://user@app.example/cb", False),
    ],
)
def test_redirect_uri_rules(uri, ok):
    """RFC 6749 §3.1.2, RFC 8252 §7-8."""
    if ok:
        validate_redirect_uri(uri)
    else:
        with pytest.raises(FieldInvalid) as refused:
            validate_redirect_uri(uri)
        assert refused.value.field == "redirect_uris"


def test_loopback_host_takes_a_port_in_range_only():
    assert loopback_host("127.0.0.1:65535") == "127.0.0.1"
    assert loopback_host("[::1]") == "[::1]"
    assert loopback_host("127.0.0.1:65536") is None
    assert loopback_host("localhost:80") is None


@pytest.mark.parametrize(("branch_id", "ok"), [("b-1:x", True), ("-b", False), ("", False)])
def test_branch_ids(branch_id, ok):
    if ok:
        assert validate_branch_id(branch_id) == branch_id
    else:
        with pytest.raises(FieldInvalid):
            validate_branch_id(branch_id)


def test_password_needs_eight_characters():
    check_password("12345678")
    with pytest.raises(FieldInvalid) as refused:
        check_password("1234567")
    assert refused.value.field == "password"
