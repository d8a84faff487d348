"""Who the client is: the peer, or what a trusted proxy says in X-Forwarded-For."""

from __future__ import annotations

import ipaddress

from task_queue.api.guard import ClientAddress


def scope(peer: str, *forwarded: str) -> dict[str, object]:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return {"client": (peer, 50000), "headers": headers}


PROXIES = ClientAddress([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1")])


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert ClientAddress([])(scope("10.1.1.1", "203.0.113.9")) == "10.1.1.1"


def test_x_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    assert PROXIES(scope("198.51.100.4", "203.0.113.9")) == "198.51.100.4"


def test_a_trusted_proxy_names_the_client() -> None:
    assert PROXIES(scope("10.1.1.1", "203.0.113.9")) == "203.0.113.9"
    assert PROXIES(scope("::1", "2001:db8::1")) == "2001:db8::1"


def test_the_first_untrusted_hop_from_the_right_is_the_client() -> None:
    # The client wrote 1.2.3.4 itself; our two proxies appended the rest.
    assert PROXIES(scope("10.0.0.2", "1.2.3.4, 203.0.113.9, 10.0.0.1")) == "203.0.113.9"
    assert PROXIES(scope("10.0.0.2", "1.2.3.4", "203.0.113.9, 10.0.0.1")) == "203.0.113.9"


def test_a_hop_that_is_not_an_address_stops_the_walk() -> None:
    assert PROXIES(scope("10.0.0.2", "203.0.113.9, garbage")) == "10.0.0.2"
    assert PROXIES(scope("10.0.0.2", "garbage, 10.0.0.1")) == "10.0.0.1"
    assert PROXIES(scope("10.0.0.2")) == "10.0.0.2"


def test_an_ipv4_proxy_seen_through_a_dual_stack_socket_is_still_trusted() -> None:
    assert PROXIES(scope("::ffff:10.0.0.2", "203.0.113.9")) == "203.0.113.9"
