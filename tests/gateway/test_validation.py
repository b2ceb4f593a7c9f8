"""The edge's checks without a server: what passes them, so that the strictness
tests/gateway/test_hostile.py holds the gateway to never refuses a well-formed order."""

from __future__ import annotations

import json

import pytest
from nats.aio.client import Client

from tradeplane_gateway.markets import MarketDirectory
from tradeplane_gateway.protocol import PlaceRequest, is_client_order_id
from tradeplane_gateway.service import Gateway
from tradeplane_gateway.validation import EdgeError, check_order_fields, decode_request

WELL_FORMED: list[tuple[str, bytes]] = [
    ("compact", b'{"market":"sol-usdt","side":"buy","quantity":"1","price":"99"}'),
    ("spaces around colons", b'{ "market" : "sol-usdt" , "side" :"buy", "quantity": "1",'
                             b' "price"\n:\t"99" }'),
    ("a colon inside a value", b'{"market":"sol:usdt","side":"buy","quantity":"1",'
                               b'"price":"99","clientOrderId":"a"}'),
    ("an escaped key", b'{"market":"sol-usdt","s\\u0069de":"buy","quantity":"1","price":"99"}'),
    ("a key that looks like another key's value",
     b'{"market":"side","side":"buy","quantity":"1","price":"99"}'),
    ("explicit defaults", json.dumps({"market": "sol-usdt", "side": "sell", "type": "limit",
                                      "quantity": "1", "price": "99", "timeInForce": "GTC",
                                      "postOnly": False, "stp": "expireMaker",
                                      "quoteAmount": None, "response": "result"}).encode()),
]


@pytest.mark.parametrize("payload", [case[1] for case in WELL_FORMED],
                         ids=[case[0] for case in WELL_FORMED])
def test_a_well_formed_place_decodes(payload: bytes) -> None:
    request = decode_request("place", payload)
    assert isinstance(request, PlaceRequest)
    assert request.quantity == "1"


DUPLICATES: list[tuple[str, bytes]] = [
    ("at the top", b'{"market":"sol-usdt","market":"sol-usdt"}'),
    ("spaced", b'{"market" : "sol-usdt", "market" : "btc-usdt"}'),
    ("escaped", b'{"market":"sol-usdt","m\\u0061rket":"btc-usdt"}'),
    ("nested", b'{"market":"sol-usdt","x":{"y":{"z":1,"z":2}}}'),
    ("in an array", b'[1, {"a":1,"a":1}]'),
    ("beside a colon in a value", b'{"market":"a:b","side":"buy","side":"buy"}'),
]


@pytest.mark.parametrize("payload", [case[1] for case in DUPLICATES],
                         ids=[case[0] for case in DUPLICATES])
def test_a_key_given_twice_is_refused(payload: bytes) -> None:
    with pytest.raises(EdgeError) as refused:
        decode_request("trades", payload)
    assert refused.value.code == 903
    assert "given twice" in refused.value.reason


def test_nesting_too_deep_to_read_is_refused_not_failed() -> None:
    for payload in (b'{"market":' + b"[" * 2000 + b"]" * 2000 + b"}",
                    b'[{"a":1,"a":' + b"[" * 2000 + b"]" * 2000 + b"}]"):
        with pytest.raises(EdgeError) as refused:
            decode_request("place", payload)
        assert refused.value.code == 903


VALID_ORDERS = [
    pytest.param({"side": "buy", "quantity": "1", "price": "99"}, id="limit"),
    pytest.param({"side": "sell", "quantity": "1", "price": "99", "postOnly": True},
                 id="post-only limit"),
    pytest.param({"side": "buy", "quantity": "1", "price": "99", "timeInForce": "FOK"},
                 id="FOK limit"),
    pytest.param({"side": "sell", "type": "market", "quantity": "1"}, id="market sell"),
    pytest.param({"side": "buy", "type": "market", "quantity": "1", "timeInForce": "FOK"},
                 id="FOK market buy"),
    pytest.param({"side": "buy", "type": "market", "quoteAmount": "10"},
                 id="market buy by quote amount"),
    pytest.param({"side": "buy", "type": "market", "quoteAmount": "10", "timeInForce": "IOC"},
                 id="IOC market buy by quote amount"),
]


@pytest.mark.parametrize("fields", VALID_ORDERS)
def test_orders_the_engine_takes_pass_the_edge(fields: dict[str, object]) -> None:
    request = decode_request("place", json.dumps({"market": "sol-usdt", **fields}).encode())
    assert isinstance(request, PlaceRequest)
    check_order_fields(request)


def test_the_gateway_names_orders_uniquely_in_the_client_order_id_grammar() -> None:
    shared = Client()  # two gateways on one connection, and one on another
    gateways = [Gateway(shared, MarketDirectory()), Gateway(shared, MarketDirectory()),
                Gateway(Client(), MarketDirectory())]
    names = [gateway._client_id() for gateway in gateways for _ in range(1_000)]
    assert len(set(names)) == len(names)  # across gateways too: each has its own prefix
    assert all(is_client_order_id(name) for name in names)
