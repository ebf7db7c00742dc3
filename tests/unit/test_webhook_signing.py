"""Standard Webhooks signing and secrets (issue #14 item 3), without a server."""

from __future__ import annotations

import pytest

from oauth2_server.config.webhook import generate_webhook_secret, parse_webhook_secret
from oauth2_server.notify.delivery import BASE_BACKOFF, backoff
from oauth2_server.notify.signing import Signer


def test_signature_matches_the_reference_libraries_example():
    # The example of the Standard Webhooks reference libraries' tests (svix lineage):
    # the same secret, id, timestamp and body give this signature in every implementation.
    signer = Signer("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    headers = signer.headers("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert headers["webhook-id"] == "msg_p5jXN8AQM9LWM0D4loKWxJek"
    assert headers["webhook-timestamp"] == "1614265330"


@pytest.mark.parametrize(
    "secret",
    ["", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_!!!!", "whsec_c2hvcnQ=", "whsec_" + "A" * 200],
)
def test_malformed_secrets_are_refused_without_showing_them(secret):
    with pytest.raises(ValueError) as refused:
        parse_webhook_secret(secret)
    assert secret[6:] == "" or secret[6:] not in str(refused.value)


def test_generated_secrets_parse_to_32_bytes_and_are_not_shown_by_repr():
    secret = generate_webhook_secret()
    assert len(parse_webhook_secret(secret)) == 32
    assert secret not in repr(Signer(secret))


def test_backoff_doubles_and_stays_within_the_maximum():
    for failures in range(1, 60):
        wait = backoff(failures, 3600.0)
        expected = min(3600.0, BASE_BACKOFF * 2 ** (failures - 1))
        assert 0.8 * expected <= wait <= 1.2 * expected
