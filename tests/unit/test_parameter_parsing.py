"""Request parameters, without a server: the form parser (RFC 6749 §3.1, Appendix B), the
client credentials reader (RFC 6749 §2.3.1, RFC 7617), request ids and how a caller's value
is quoted in an error description (RFC 6749 §5.2) — their documented limits and refusals.
"""

from __future__ import annotations

import base64

import pytest

from oauth2_server.oauth.authlib_server import plain
from oauth2_server.oauth.clients import (
    MAX_CLIENT_ID_LENGTH,
    MAX_SECRET_LENGTH,
    BadClientCredentials,
    MultipleAuthMethods,
    parse_client_credentials,
    presented_method,
)
from oauth2_server.web.forms import BadRequest, new_request_id, parse_params


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = f"{client_id}:{secret}".encode()
    return {"authorization": "Basic " + base64.b64encode(raw).decode()}


def bad_request(text: str, **options: bool) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        parse_params(text, **options)
    return caught.value


# -- the form body (RFC 6749 §3.1, Appendix B) -----------------------------------------------


def test_form_values_are_decoded_and_empty_ones_are_omitted():
    """RFC 6749 §3.1: parameters sent without a value are treated as omitted."""
    params = parse_params("grant_type=client_credentials&scope=a+b%3Ac&state=&audience")
    assert params == {"grant_type": ["client_credentials"], "scope": ["a b:c"]}


def test_repeated_parameter_is_invalid_request_naming_it():
    """RFC 6749 §3.1: request parameters MUST NOT be included more than once."""
    error = bad_request("scope=a&scope=b")
    assert (error.error, error.status, error.field) == ("invalid_request", 400, "scope")
    assert error.description == "parameter 'scope' is included more than once"
    assert parse_params("scope=a&scope=b", allow_repeats=True) == {"scope": ["a", "b"]}


def test_a_repeated_empty_parameter_is_still_omitted():
    assert parse_params("state=&state=&scope=a") == {"scope": ["a"]}


@pytest.mark.parametrize(
    ("text", "field"),
    [("scope=a%00b", "scope"), ("sco%0Ape=a", "sco?pe"), ("x=%7F", "x"), ("y=%1Fz", "y")],
    ids=["nul-in-value", "newline-in-name", "delete", "unit-separator"],
)
def test_control_character_is_invalid_request_naming_the_parameter(text, field):
    """RFC 6749 Appendix A: no OAuth parameter holds a control character."""
    error = bad_request(text)
    assert error.field == field
    assert error.description == f"parameter '{field}' contains a control character"


def test_names_in_messages_are_cut_at_40_characters():
    name = "n" * 100
    assert bad_request(f"{name}=1&{name}=2").field == "n" * 40
    assert bad_request(f"{name}=%00").field == "n" * 40


def test_malformed_percent_encoding_is_invalid_request():
    """Appendix B: UTF-8 before percent-encoding; an invalid sequence is refused."""
    error = bad_request("scope=%FF%FE")
    assert error.error == "invalid_request"
    assert error.description.startswith("malformed form body:")


def test_at_most_100_fields():
    hundred = "&".join(f"p{i}=v" for i in range(100))
    assert len(parse_params(hundred)) == 100
    assert bad_request(hundred + "&p100=v").description.startswith("malformed form body:")


# -- request ids -----------------------------------------------------------------------------


@pytest.mark.parametrize("presented", ["abc-123", "x" * 64, "with space ok"])
def test_a_short_printable_request_id_is_kept(presented):
    assert new_request_id(presented) == presented


@pytest.mark.parametrize("presented", [None, "", "x" * 65, "line\nbreak", "tab\there"])
def test_other_request_ids_are_replaced(presented):
    made = new_request_id(presented)
    assert made != presented and len(made) == 32 and int(made, 16) >= 0


# -- client credentials (RFC 6749 §2.3.1) ---------------------------------------------------


def test_http_basic_credentials_are_form_urldecoded():
    """RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding."""
    found = parse_client_credentials(basic("my%3Aclient", "s%25cret"), {})
    assert (found.client_id, found.secret, found.basic) == ("my:client", "s%cret", True)
    assert presented_method(found) == "client_secret_basic"


def test_basic_with_an_empty_password_presents_no_secret():
    found = parse_client_credentials(basic("app", ""), {})
    assert found.secret is None and presented_method(found) == "none"


def test_form_credentials_and_none():
    post = parse_client_credentials({}, {"client_id": "svc", "client_secret": "s"})
    assert (post.client_id, post.secret, post.basic) == ("svc", "s", False)
    assert presented_method(post) == "client_secret_post"
    public = parse_client_credentials({}, {"client_id": "app"})
    assert public.secret is None and presented_method(public) == "none"
    assert parse_client_credentials({}, {}) is None and presented_method(None) is None


def test_another_authorization_scheme_is_not_client_authentication():
    assert parse_client_credentials({"authorization": "Bearer abc"}, {}) is None


@pytest.mark.parametrize(
    "header",
    ["Basic", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode()]
    + ["Basic " + base64.b64encode(b"\xff\xfe:x").decode()]
    + ["Basic " + base64.b64encode(b"id%FF:x").decode()],
    ids=["empty", "not-base64", "no-colon", "not-utf-8", "bad-percent-escape"],
)
def test_malformed_basic_header_is_invalid_client_401(header):
    """RFC 6749 §5.2 invalid_client; over HTTP Basic it is answered 401."""
    with pytest.raises(BadClientCredentials) as caught:
        parse_client_credentials({"authorization": header}, {})
    assert caught.value.error == "invalid_client" and caught.value.basic is True
    assert caught.value.description == "malformed HTTP Basic credentials"


@pytest.mark.parametrize(
    ("client_id", "secret", "says"),
    [
        ("i" * MAX_CLIENT_ID_LENGTH, "s" * MAX_SECRET_LENGTH, None),
        ("i" * (MAX_CLIENT_ID_LENGTH + 1), "s", "client_id must be 1-64 printable"),
        ("", "s", "client_id must be 1-64 printable"),
        ("caf\u00e9", "s", "client_id must be 1-64 printable"),
        ("id\x00", "s", "client_id must be 1-64 printable"),
        ("id", "s" * (MAX_SECRET_LENGTH + 1), "client_secret must be 1-512 printable"),
        ("id", "s\x7f", "client_secret must be 1-512 printable"),
    ],
    ids=["at-the-limits", "long-id", "empty-id", "non-ascii-id", "nul-id", "long-secret", "del"],
)
@pytest.mark.parametrize("by_basic", [True, False], ids=["basic", "form"])
def test_client_id_and_secret_are_bounded_vschar(client_id, secret, says, by_basic):
    """RFC 6749 Appendix A.1/A.2: VSCHAR (%x20-7E); ids fit the 64-character column."""
    if by_basic:
        headers, form = basic(client_id.replace("%", "%25"), secret), {}
    else:
        headers, form = {}, {"client_id": client_id, "client_secret": secret}
    if says is None:
        assert parse_client_credentials(headers, form).client_id == client_id
        return
    with pytest.raises(BadClientCredentials) as caught:
        parse_client_credentials(headers, form)
    assert caught.value.description.startswith(says) and caught.value.basic is by_basic


def test_secret_without_client_id_is_invalid_client():
    with pytest.raises(BadClientCredentials, match="client_secret was sent without client_id"):
        parse_client_credentials({}, {"client_secret": "s"})


def test_basic_may_repeat_its_own_client_id_in_the_form():
    """RFC 6749 §3.2.1: a client MAY send client_id to identify itself."""
    found = parse_client_credentials(basic("svc", "s"), {"client_id": "svc"})
    assert (found.client_id, found.basic) == ("svc", True)


@pytest.mark.parametrize(
    ("form", "ids"),
    [({"client_secret": "s2"}, ("svc",)), ({"client_id": "other", "client_secret": "s2"}, None)]
    + [({"client_id": "other"}, ("svc", "other"))],
    ids=["basic-and-form-secret", "basic-and-another-clients-post", "basic-and-another-id"],
)
def test_two_authentication_methods_are_invalid_request(form, ids):
    """RFC 6749 §2.3: the client MUST NOT use more than one authentication method."""
    with pytest.raises(MultipleAuthMethods) as caught:
        parse_client_credentials(basic("svc", "s"), form)
    assert caught.value.error == "invalid_request"
    assert caught.value.client_ids == (ids or ("svc", "other"))


# -- a caller's value in an error description (RFC 6749 §5.2) -------------------------------


def test_values_are_quoted_cut_and_limited_to_error_description_characters():
    """RFC 6749 §5.2: error_description is %x20-21 / %x23-5B / %x5D-7E."""
    assert plain("read") == "'read'"
    assert plain('a"b\\c\u00e9\n') == "'a?b?c??'"
    assert plain("x" * 65) == "'" + "x" * 64 + "...'"
    assert plain("x" * 64) == "'" + "x" * 64 + "'"
    assert plain("abcdef", limit=3) == "'abc...'"
