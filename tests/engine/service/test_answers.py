"""Answers to gateways, grouped where the subject asks and kept under a size."""

from __future__ import annotations

import asyncio

import msgspec

from tradeplane_engine.service.answers import Answers
from tradeplane_engine.wire import GROUPED, GROUPED_ACKS, decode_grouped


class Sent:
    """What was published, in order: (subject, payload, headers)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, dict[str, str] | None]] = []

    async def publish(self, subject: str, payload: bytes,
                      headers: dict[str, str] | None = None) -> None:
        self.messages.append((subject, payload, headers))


def test_a_batchs_answers_go_grouped_per_gateway_and_alone_elsewhere() -> None:
    async def scenario() -> Sent:
        sent = Sent()
        answers = Answers(sent.publish, GROUPED)
        await answers.add("_SVC.gateway.a.g.1", b'{"n":1}')
        await answers.add("_SVC.gateway.b.g.7", b'{"n":2}', order='{"orderId":3}')
        await answers.add("_SVC.gateway.a.g.2", b'{"n":3}')
        await answers.add("_SVC.gateway.a.r.3", b'{"n":4}', order='{"orderId":4}')
        await answers.add("_SVC.gateway.a.k.4", b'{"n":5}')  # another kind: alone
        await answers.send()
        return sent

    sent = asyncio.run(scenario())
    alone = [(subject, payload, headers) for subject, payload, headers in sent.messages
             if not subject.endswith((".a.g", ".b.g"))]
    assert alone == [("_SVC.gateway.a.r.3", b'{"n":4}', {"Tp-Order": '{"orderId":4}'}),
                     ("_SVC.gateway.a.k.4", b'{"n":5}', None)]
    grouped = {subject: decode_grouped(payload) for subject, payload, _ in sent.messages
               if subject.endswith((".a.g", ".b.g"))}
    assert [(item.token, bytes(item.answer), item.named())
            for item in grouped["_SVC.gateway.a.g"]] == [("1", b'{"n":1}', None),
                                                           ("2", b'{"n":3}', None)]
    assert [(item.token, item.named()) for item in grouped["_SVC.gateway.b.g"]] == [
        ("7", b'{"orderId":3}')]


def test_refusals_are_marked_and_a_group_stays_under_its_limit() -> None:
    async def scenario() -> Sent:
        sent = Sent()
        answers = Answers(sent.publish, GROUPED_ACKS, limit=200)
        for token in range(6):
            await answers.add(f"_SVC.gateway.a.k.{token}", b'{"seq":%d}' % token,
                              refused=token == 4)
        await answers.add("_SVC.gateway.a.a.9", b"{}", refused=True)  # not grouped
        await answers.send()
        return sent

    sent = asyncio.run(scenario())
    groups = [payload for subject, payload, _ in sent.messages if subject == "_SVC.gateway.a.k"]
    assert len(groups) > 1
    assert all(len(payload) <= 200 for payload in groups)
    items = [item for payload in groups for item in decode_grouped(payload)]
    assert [item.token for item in items] == [str(token) for token in range(6)]
    assert [item.refused for item in items] == [False] * 4 + [True, False]
    assert [msgspec.json.decode(bytes(item.answer)) for item in items] == [
        {"seq": token} for token in range(6)]
    assert ("_SVC.gateway.a.a.9", b"{}", {"Tp-Refused": "1"}) in sent.messages
