"""`municipal-gateway write CONFIG DEVICE POINT VALUE`: one command from the engineer on site, with the checks,
the audit and the read-back of a command from the control room, while the gateway is not running.

The device's link is opened here (the state directory's lock keeps a running gateway out, which owns its
links), polled once so a guard has its inputs, and the command goes through the same command service as one
from MQTT. Its audit records are committed to the gateway's buffer, so the centre gets them on the audit
topic once the gateway runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
from collections.abc import Sequence
from typing import Any

from drivers.registry import make_driver
from gateway.buffer import Buffer
from gateway.clock import ClockWatch, assumed_clock_state, system_clock_state
from gateway.commands.audit import AUDIT_FILE, AuditLog
from gateway.commands.service import CommandService
from gateway.config.loader import GatewayConfig
from gateway.links import DeviceStatus, LinkRunner
from gateway.mapping import DeviceMapper
from gateway.model.devices import DeviceBase
from gateway.model.readings import Sample, Value, now_ms
from gateway.model.resolved import ResolvedDevice
from gateway.model.writes import Refused, write_policy
from gateway.pipeline import Pipeline
from gateway.publisher import IncomingCommand
from gateway.topics import Topics

# How many reply timeouts the first poll may take before the command is sent anyway (and fails or is refused).
_FIRST_POLL_FACTOR = 5


def parse_value(text: str) -> Value:
    """A command-line value: true/false, a number, or text."""
    if text.lower() in ("true", "on"):
        return True
    if text.lower() in ("false", "off"):
        return False
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def preview(resolved: ResolvedDevice[DeviceBase], point: str, value: Value) -> str:
    """What will be written, for the confirmation question (the checks themselves run again when sent)."""
    target = next((p for p in resolved.points if p.name == point), None)
    if target is None:
        return f"{resolved.id}/{point}: no such point"
    policy = write_policy(target)
    if policy is None:
        return f"{resolved.id}/{point}: not declared writable"
    try:
        canonical = policy.check(value)
        raw = policy.raw(canonical)
    except Refused as refusal:
        return f"{resolved.id}/{point} = {value!r}: will be refused ({refusal.reason}: {refusal})"
    unit = target.indicator.unit
    return f"write {json.dumps(canonical)} {unit} to {resolved.id}/{point} (the device's value: {json.dumps(raw)})"


async def write_once(config: GatewayConfig, resolved: ResolvedDevice[DeviceBase], point: str, value: Value,
                     command_id: str) -> dict[str, Any]:
    """Send one command through the command service; its result."""
    settings = config.main
    topics = Topics(settings.mqtt.topic_prefix, settings.gateway.id)
    probe = system_clock_state if settings.clock.source == "system" else assumed_clock_state
    clock = ClockWatch(probe)
    clock.check()
    result: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    polled = asyncio.Event()

    def reply(topic: str, body: bytes, correlation: bytes | None) -> bool:
        if not result.done():
            result.set_result(json.loads(body))
        return True

    async with contextlib.AsyncExitStack() as resources:
        buffer = await Buffer.open(config.buffer_path, settings.buffer.max_bytes, settings.buffer.synchronous)
        resources.push_async_callback(buffer.close)
        audit = await AuditLog.open(config.state_dir / AUDIT_FILE, settings.commands.audit_max_entries)
        resources.push_async_callback(audit.close)
        mapper = DeviceMapper(resolved)
        pipeline = Pipeline(settings.gateway.id, topics, {resolved.id: mapper}, buffer)
        driver = make_driver([resolved.config], config.link_context)
        service: CommandService | None = None

        def on_samples(device: DeviceBase, samples: Sequence[Sample], receive_ms: int) -> None:
            if service is not None:
                service.observe(mapper.readings(samples, receive_ms))
            polled.set()

        def on_failure(device: DeviceBase, reason: str, receive_ms: int) -> None:
            polled.set()

        def on_status(status: DeviceStatus[Any]) -> None:
            pass

        runner: LinkRunner[Any] = LinkRunner(resolved.config.link_id(), driver, on_samples, on_failure, on_status)
        service = CommandService(settings.gateway.id, topics, settings.commands, [resolved],
                                 {resolved.id: runner}, audit, pipeline, clock, reply)  # on site: unsigned
        async with asyncio.TaskGroup() as tasks:
            parts = [tasks.create_task(pipeline.run(), name="pipeline"),
                     tasks.create_task(service.run(), name="commands"),
                     tasks.create_task(runner.run(), name="link")]
            try:
                await service.wait_ready()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(resolved.config.timeout * _FIRST_POLL_FACTOR):
                        await polled.wait()
                body = {"id": command_id, "device": resolved.id, "point": point, "value": value,
                        "issued": now_ms(), "source": f"cli/{_user()}"}
                service.on_command(IncomingCommand(json.dumps(body).encode(), False, None, None))
                answer = await result
                await service.settled()  # its audit records are committed and handed to the buffer
                await pipeline.drained()
            finally:
                for part in reversed(parts):
                    part.cancel()
        return answer


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"

