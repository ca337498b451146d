"""From samples to committed messages: mapping → processing → encoding → buffer.

Drivers hand samples over synchronously (`submit`); the pipeline maps them to
readings, encodes one message per asset per poll and queues it. A single
writer task commits everything queued so far in one transaction (group
commit), so a burst of polls costs one disk sync, not one each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from gateway.buffer import Buffer, Message
from gateway.mapping import DeviceMapper
from gateway.model import Reading, Sample, now_ms
from gateway.payload import encode_batch
from gateway.topics import Topics

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, gateway_id: str, topics: Topics, mappers: dict[str, DeviceMapper], buffer: Buffer) -> None:
        self._gateway_id = gateway_id
        self._topics = topics
        self._mappers = mappers
        self._buffer = buffer
        self._pending: list[Message] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.readings_committed = 0

    def submit(self, device_id: str, samples: Sequence[Sample], receive_time_ms: int) -> None:
        mapper = self._mappers[device_id]
        self._enqueue(mapper, mapper.readings(samples, receive_time_ms))

    def submit_failure(self, device_id: str, reason: str, receive_time_ms: int) -> None:
        mapper = self._mappers[device_id]
        self._enqueue(mapper, mapper.failed(reason, receive_time_ms))

    def _enqueue(self, mapper: DeviceMapper, readings: list[Reading]) -> None:
        if not readings:
            return
        first_seq = self._buffer.allocate_sequence(len(readings))
        body = encode_batch(self._gateway_id, mapper.asset, readings, first_seq)
        self._pending.append(Message(self._topics.data(mapper.asset), body, 0, first_seq,
                                     first_seq + len(readings) - 1, now_ms()))
        self._idle.clear()
        self._wake.set()

    async def run(self) -> None:
        """Commit queued messages until cancelled; on cancellation commit what is queued, then stop."""
        try:
            while True:
                await self._wake.wait()
                await self._commit_pending()
        finally:
            if self._pending:
                # Shutting down: what was read must still reach the disk.
                await asyncio.shield(self._commit_pending())

    async def _commit_pending(self) -> None:
        self._wake.clear()
        batch, self._pending = self._pending, []
        if batch:
            await self._buffer.commit(batch)
            self.readings_committed += sum(m.last_seq - m.first_seq + 1 for m in batch)
        if not self._pending:
            self._idle.set()

    async def drained(self) -> None:
        """Wait until everything submitted so far is committed."""
        await self._idle.wait()
