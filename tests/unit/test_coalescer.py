"""The router's coalescing of requests to a model deployment (aiinfra/serving/deployments.py, Coalescer): one
call's fixed cost for the requests that waited, each request still answered (or failed) by its own rows."""

from __future__ import annotations

import asyncio

import pytest

from aiinfra.errors import InvalidInput, ServiceUnavailable
from aiinfra.serving.deployments import MAX_COALESCED_ROWS, Coalescer


class Deployment:
    """A model deployment that answers each request's rows doubled, and refuses a request with a bad row."""

    def __init__(self) -> None:
        self.calls: list[list[list[int]]] = []
        self.gate = asyncio.Event()
        self.fail = False

    async def __call__(self, batch: list[list[int]]) -> list[object]:
        self.calls.append(batch)
        await self.gate.wait()
        if self.fail:
            raise ServiceUnavailable("the replica went away")
        return [InvalidInput(f"bad row in {rows}") if -1 in rows else [2 * r for r in rows] for rows in batch]


def test_requests_that_come_while_calls_are_out_go_together_and_are_answered_each_its_own():
    async def run() -> None:
        model = Deployment()
        calls = Coalescer(model, in_flight=1)
        first = asyncio.ensure_future(calls.submit([1]))
        await asyncio.sleep(0)
        rest = [asyncio.ensure_future(calls.submit([i, i])) for i in (2, 3, -1, 4)]
        await asyncio.sleep(0)
        assert model.calls == [[[1]]]  # the first went at once, alone: nothing waits for a batch to fill
        model.gate.set()
        assert await first == [2]
        answers = await asyncio.gather(*rest, return_exceptions=True)
        assert answers[0] == [4, 4] and answers[1] == [6, 6] and answers[3] == [8, 8]
        assert isinstance(answers[2], InvalidInput) and "-1" in str(answers[2])  # fails alone
        assert model.calls[1] == [[2, 2], [3, 3], [-1, -1], [4, 4]]  # the four that waited: one call
        assert not calls.busy

    asyncio.run(run())


def test_a_failed_call_fails_the_requests_it_carried_and_the_next_call_still_goes():
    async def run() -> None:
        model = Deployment()
        calls = Coalescer(model, in_flight=2)
        model.fail = True
        model.gate.set()
        with pytest.raises(ServiceUnavailable):
            await calls.submit([1])
        model.fail = False
        assert await calls.submit([5]) == [10]

    asyncio.run(run())


def test_a_call_carries_at_most_the_row_bound_and_a_caller_that_hung_up_is_skipped():
    async def run() -> None:
        model = Deployment()
        calls = Coalescer(model, in_flight=1)
        first = asyncio.ensure_future(calls.submit([0]))
        await asyncio.sleep(0)
        big = [1] * (MAX_COALESCED_ROWS - 1)
        a = asyncio.ensure_future(calls.submit(big))
        gone = asyncio.ensure_future(calls.submit([7]))
        b = asyncio.ensure_future(calls.submit([2, 2]))
        await asyncio.sleep(0)
        gone.cancel()
        model.gate.set()
        await first
        assert len(await a) == MAX_COALESCED_ROWS - 1 and await b == [4, 4]
        assert [len(c) for c in model.calls] == [1, 2, 1]  # big + [7] fit; [2, 2] went in the next call

    asyncio.run(run())
