"""Which configured API key a request presents, in either header form."""

from __future__ import annotations

from task_queue.api.auth import ApiKeys

KEYS = ApiKeys(["first-key", "second-key"])


def headers(**given: str) -> list[tuple[bytes, bytes]]:
    return [(name.replace("_", "-").encode(), value.encode()) for name, value in given.items()]


def test_a_bearer_token_or_an_x_api_key_header_presents_a_key() -> None:
    bearer = KEYS.match(headers(authorization="Bearer first-key"))
    assert bearer is not None
    assert KEYS.match(headers(x_api_key="first-key")) == bearer
    assert KEYS.match(headers(authorization="bearer second-key")) not in (None, bearer)


def test_a_wrong_a_missing_or_a_non_bearer_key_presents_none() -> None:
    assert KEYS.match(headers(authorization="Bearer first-ke")) is None
    assert KEYS.match(headers(x_api_key="first-key-and-more")) is None
    assert KEYS.match(headers(authorization="Basic Zmlyc3Qta2V5")) is None
    assert KEYS.match([]) is None


def test_the_key_id_is_a_digest_not_the_key() -> None:
    key_id = KEYS.match(headers(x_api_key="first-key"))
    assert key_id is not None
    assert "first-key" not in key_id
    assert ApiKeys(["second-key", "first-key"]).match(headers(x_api_key="first-key")) == key_id


def test_no_configured_keys_is_false() -> None:
    assert not ApiKeys([])
    assert KEYS
