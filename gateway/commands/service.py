"""The command path: from a message on the command topic to a write on the device, or a refusal, and the trace.

Every check runs before anything is sent, in this order, and the first that fails refuses the command:

    retained message · gateway rate · payload · signature · clock · age · device and point · writable ·
    type, allowed values, range, step · representable · minimum interval and point rate · guard

An accepted command is committed to the audit log first, and only then acknowledged to the broker (so one
a crash cuts short before that is delivered again, not lost); then its write goes to the link's request task
(gateway/links.py), so it never overlaps a poll; then the point is read back. A refusal is acknowledged once
it is in the log too. The same id again (a QoS 1 redelivery, a replay) is answered with the first result and
never executed twice, across restarts too (the audit log remembers). Results go to the result topic (and
the sender's MQTT 5 response topic, with its correlation data); the audit record of each command and result
goes through the buffer with alarm priority, so the centre gets it even after an outage.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.clock import ClockWatch
from gateway.commands.audit import AuditLog, Entry
from gateway.commands.message import Command, command_id, parse_command, signature_ok
from gateway.links import LinkRunner
from gateway.model.commands import CommandSettings
from gateway.model.devices import DeviceBase
from gateway.model.driver import DriverError, WriteRefused
from gateway.model.readings import Quality, Reading, Value, now_ms
from gateway.model.resolved import ResolvedDevice
from gateway.model.writes import Refused, WritePolicy, write_policy
from gateway.pipeline import Pipeline
from gateway.publisher import IncomingCommand
from gateway.topics import Topics

log = logging.getLogger(__name__)

# Results remembered to answer a redelivered id without acting again (and reloaded from the audit log).
_REMEMBERED = 10_000
# Refusals that say "not now" rather than "never": a redelivery of the same id is judged afresh.
_TRANSIENT = frozenset({"rate-limited", "too-soon", "not-ready"})

Reply = Callable[[str, bytes, bytes | None], bool]
_NEVER = 2**62  # the deadline of the gateway's own commands (UTC ms)


class Circuits(Protocol):
    """The lighting schedules, as the command path sees them (gateway/lighting.py)."""

    def target(self, circuit: str) -> tuple[str, str] | None:
        """The (device, point) a circuit switches; None for an unknown circuit."""

    def overridden(self, circuit: str, value: Value, until_ms: int, command_id: str) -> None:
        """An override was written; the circuit keeps it until `until_ms`."""

    def resume(self, circuit: str, command_id: str) -> None:
        """Back to the schedule now."""


class CommandSetupError(Exception):
    """The command path cannot start as configured (a missing secret); the message never holds a secret."""


def command_secret(settings: CommandSettings, environ: Mapping[str, str]) -> bytes | None:
    """The shared secret of signed commands, from the environment or a file; None when commands are unsigned."""
    signature = settings.signature
    if signature is None:
        return None
    if signature.secret_env is not None:
        value = environ.get(signature.secret_env)
        if not value:
            raise CommandSetupError(f"commands.signature.secret_env: the environment variable "
                                    f"{signature.secret_env} is not set (or empty)")
        return value.encode()
    assert signature.secret_file is not None
    try:
        secret = signature.secret_file.read_bytes().strip()
    except OSError as exc:
        raise CommandSetupError(f"commands.signature.secret_file: cannot read {signature.secret_file}: "
                                f"{exc.strerror}") from None
    if not secret:
        raise CommandSetupError(f"commands.signature.secret_file: {signature.secret_file} is empty")
    return secret


class TokenBucket:
    """`rate` per second with a burst of `rate` (at least 1)."""

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._clock = clock
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@dataclass(slots=True)
class _Target:
    device: ResolvedDevice[DeviceBase]
    policy: WritePolicy
    runner: LinkRunner[Any]
    bucket: TokenBucket
    last_write: float | None = None  # monotonic seconds of the last accepted write


class _Settling:
    """A write whose read-back differed, watching the point's polls for the value written (a valve on its way)."""

    __slots__ = ("device", "last", "policy", "reached", "wanted")

    def __init__(self, device: str, policy: WritePolicy, wanted: Value, last: Value) -> None:
        self.device, self.policy, self.wanted, self.last = device, policy, wanted, last
        self.reached = asyncio.Event()

    def observe(self, readings: Sequence[Reading]) -> None:
        point = self.policy.point.name
        for reading in readings:
            if reading.device == self.device and reading.point == point and reading.quality is Quality.GOOD:
                self.last = reading.value
                if self.policy.confirms(self.wanted, reading.value):
                    self.reached.set()


class CommandService:
    def __init__(self, gateway_id: str, topics: Topics, settings: CommandSettings,
                 devices: Sequence[ResolvedDevice[DeviceBase]], runners: Mapping[str, LinkRunner[Any]],
                 audit: AuditLog, pipeline: Pipeline, clock: ClockWatch, reply: Reply, *,
                 secret: bytes | None = None, wall_ms: Callable[[], int] = now_ms,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """`runners` by device id: the link each device's writes go through. `reply(topic, body, correlation)`
        publishes a result. `wall_ms`: the wall clock commands' ages are judged by (tests move it)."""
        self._gateway_id = gateway_id
        self._topics = topics
        self._settings = settings
        self._audit = audit
        self._pipeline = pipeline
        self._clock = clock
        self._reply = reply
        self._secret = secret
        self._wall = wall_ms
        self._monotonic = monotonic
        self._devices = {d.id: d for d in devices}
        self._targets: dict[tuple[str, str], _Target] = {}
        for device in devices:
            runner = runners.get(device.id)
            for point in device.points:
                policy = write_policy(point)
                if policy is not None and runner is not None:
                    self._targets[(device.id, point.name)] = _Target(
                        device, policy, runner, TokenBucket(settings.rate.per_point, monotonic))
        self._gateway_bucket = TokenBucket(settings.rate.per_gateway, monotonic)
        self._latest: dict[str, dict[str, Reading]] = {}  # asset id -> series (indicator[instance]) -> latest
        self._results: collections.OrderedDict[str, Entry] = collections.OrderedDict()
        self._running: dict[str, list[IncomingCommand]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ready = asyncio.Event()
        self._waiters: dict[str, asyncio.Future[Entry]] = {}  # results awaited in the gateway (schedules)
        self._settling: list[_Settling] = []  # writes waiting for a poll to read their value (confirm_within)
        self._local = 0
        self.circuits: Circuits | None = None
        self.executed = 0  # writes sent to devices (for tests and the bench)

    # -- running ------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Audit what a previous run left unfinished, then serve commands until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._audit.run(), name="audit-log")
            await self._recall()
            self._ready.set()
            try:
                await asyncio.Event().wait()  # commands arrive through on_command
            finally:
                for task in list(self._tasks):
                    task.cancel()
                if self._tasks:
                    await asyncio.wait(self._tasks)

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def settled(self) -> None:
        """Wait until every command received so far is finished and its audit records written."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def _recall(self) -> None:
        """Results of the last `max_age_limit` are remembered again; a command the gateway accepted but was
        stopped (or killed) before finishing gets its result now: failed, interrupted."""
        horizon = self._wall() - round(1000 * (self._settings.max_age_limit + self._settings.future_tolerance
                                               + (self._settings.signature.window if self._settings.signature
                                                  else 0)))
        for entry in await self._audit.recent_results(horizon):
            self._remember(entry)
        for accepted in await self._audit.interrupted():
            result = {**{k: accepted.get(k) for k in ("id", "device", "point", "value")},
                      "gateway": self._gateway_id, "status": "failed", "reason": "interrupted",
                      "message": "the gateway stopped while the write was under way; what the device did is "
                                 "unknown (read the point)", "finished": self._wall()}
            log.warning("command %s was interrupted by a restart; recorded as failed", accepted.get("id"))
            self._remember(result)  # a redelivery of it is answered, never executed
            await self._record_result(result)

    def observe(self, readings: Sequence[Reading]) -> None:
        """Every poll's readings (for guards, which name them as derived expressions do: `indicator[instance]`
        where the asset has the indicator more than once)."""
        for reading in readings:
            self._latest.setdefault(reading.asset.asset, {})[reading.series] = reading
        for settling in self._settling:
            settling.observe(readings)

    # -- one command ----------------------------------------------------------------------------------------------

    def submit(self, device: str, point: str, value: Value, source: str) -> asyncio.Future[Entry]:
        """A command of the gateway's own (a lighting schedule switching): the same checks but the clock's (its
        caller decided), the same execution and audit; the future is its result."""
        self._local += 1
        cid = f"{source.replace('/', '.')}.{self._wall()}.{self._local}"
        done: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        self._waiters[cid] = done
        body = {"id": cid, "device": device, "point": point, "value": value, "issued": self._wall(),
                "source": source}
        self._accept(IncomingCommand(json.dumps(body).encode(), False, None, None), local=True)
        return done

    def on_command(self, incoming: IncomingCommand) -> None:
        """A message on the command topic (on the event loop). Never raises: a problem is a refusal."""
        self._accept(incoming, local=False)

    def _accept(self, incoming: IncomingCommand, local: bool) -> None:
        received = self._wall()
        cid = command_id(incoming.payload)
        if cid is not None and cid in self._running:
            self._running[cid].append(incoming)  # answered with the first one's result, once it is in the log
            return
        if cid is not None and cid in self._results:
            self._answer(incoming, {**self._results[cid], "duplicate": True})
            return
        command: Command | None = None
        try:
            if not self._ready.is_set():
                raise Refused("not-ready", "the gateway is starting; send the command again")
            if incoming.retained:
                raise Refused("malformed", "a retained message is never executed as a command; publish "
                                           "commands without the retain flag")
            if not local and not self._gateway_bucket.take():
                raise Refused("rate-limited", f"more than {self._settings.rate.per_gateway:g} commands a second "
                                              "to this gateway")
            command = parse_command(incoming.payload)
            if not local:
                self._authenticate(command, received)
            # The gateway's own commands are made now and sent at once: a clock step while one waits for the
            # disk does not make it stale (and the schedule would only make it again).
            deadline = self._check_age(command, received, local) if not local else _NEVER
            if command.circuit is not None:
                command = self._circuit_command(command)
                if command.value == "schedule":
                    self._resume(incoming, command, received)
                    return
            target = self._target(command)
            canonical = target.policy.check(command.value)
            raw = target.policy.raw(canonical)
            self._pace(target, local)
            target.policy.check_guard(self._latest.get(target.device.asset.asset, {}), received)
        except Refused as refusal:
            self._refuse(incoming, cid, command, refusal, received)
            return
        except Exception:  # a bug in a check must not take the command path down, nor act
            log.exception("command %s: unexpected error while checking it; refused", cid)
            self._refuse(incoming, cid, command, Refused("internal-error", "the gateway could not check "
                                                                            "the command"), received)
            return
        target.last_write = self._monotonic()
        self._running[command.id] = [incoming]
        task = asyncio.get_running_loop().create_task(
            self._execute(command, target, canonical, raw, received, deadline), name=f"command {command.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _authenticate(self, command: Command, received: int) -> None:
        signature = self._settings.signature
        if signature is None or self._secret is None:
            return
        if command.signature is None:
            raise Refused("bad-signature", "commands to this gateway must be signed (`signature`)")
        if not signature_ok(command, self._secret):
            raise Refused("bad-signature", "the signature does not match the command")
        if abs(received - command.issued_ms) > signature.window * 1000:
            raise Refused("replayed", f"a signed command is accepted within {signature.window:g} s of its "
                                      f"`issued` time; this one is {(received - command.issued_ms) / 1000:.1f} s "
                                      "from the gateway's clock")

    def _circuit_command(self, command: Command) -> Command:
        """An override: the circuit's own device and point."""
        assert command.circuit is not None
        target = self.circuits.target(command.circuit) if self.circuits is not None else None
        if target is None:
            raise Refused("unknown-circuit", f"no lighting circuit {command.circuit[:64]!r} on this gateway")
        return dataclasses.replace(command, device=target[0], point=target[1])

    def _resume(self, incoming: IncomingCommand, command: Command, received: int) -> None:
        assert self.circuits is not None and command.circuit is not None
        self.circuits.resume(command.circuit, command.id)
        result = {**command.describe(), "device": command.device, "point": command.point,
                  "gateway": self._gateway_id, "received": received, "status": "done", "mode": "schedule",
                  "finished": self._wall()}
        self._remember(result)
        self._spawn(self._record_and_answer(result, [incoming]))

    def _check_age(self, command: Command, received: int, local: bool = False) -> int:
        """The command's deadline (UTC ms); Refused when it is past, or when its age cannot be judged."""
        settings = self._settings
        if self._clock.uncertain and not settings.allow_unsynchronised_clock and not local:
            raise Refused("clock-unsynchronised", "the gateway's clock is known not to be synchronised, so the "
                                                  "command's age cannot be judged (commands.allow_unsynchronised_"
                                                  "clock accepts them anyway)")
        max_age = min(command.max_age or settings.max_age, settings.max_age_limit)
        deadline = command.issued_ms + round(max_age * 1000)
        if command.expires_ms is not None:
            deadline = min(deadline, command.expires_ms)
        age = received - command.issued_ms
        if age < -settings.future_tolerance * 1000:
            raise Refused("clock-skew", f"issued {-age / 1000:.1f} s in the future by the gateway's clock")
        if received > deadline:
            raise Refused("expired", f"received {age / 1000:.1f} s after it was issued; it expired "
                                     f"{(received - deadline) / 1000:.1f} s ago and is never executed")
        return deadline

    def _target(self, command: Command) -> _Target:
        device = self._devices.get(command.device)
        if device is None or not device.config.enabled:
            raise Refused("unknown-device", f"no device {command.device[:64]!r} on this gateway")
        target = self._targets.get((command.device, command.point))
        if target is None:
            if not any(p.name == command.point for p in device.points):
                raise Refused("unknown-point", f"device {device.id} has no point {command.point[:64]!r}")
            raise Refused("not-writable", f"point {command.point} of device {device.id} is not declared writable")
        return target

    def _pace(self, target: _Target, local: bool) -> None:
        """The point's minimum interval; the rate limits for commands from outside (the schedules' own writes
        are few by design)."""
        policy = target.policy
        now = self._monotonic()
        if target.last_write is not None and now - target.last_write < policy.min_interval:
            raise Refused("too-soon", f"point {policy.point.name} takes one write every {policy.min_interval:g} s "
                                      "at most")
        if not local and not target.bucket.take():
            raise Refused("rate-limited", f"more than {self._settings.rate.per_point:g} commands a second to "
                                          f"point {policy.point.name}")

    async def _execute(self, command: Command, target: _Target, canonical: Value, raw: Value, received: int,
                       deadline: int) -> None:
        base = {**command.describe(), "gateway": self._gateway_id, "received": received}
        if self._clock.uncertain:
            base["clock"] = "unsynchronised"
        result: Entry
        log.info("command %s accepted: %s/%s = %r from %r", command.id, command.device, command.point, canonical,
                 command.source or "an unnamed sender")
        try:
            try:
                await self._audit_entry("command", {**base, "raw": raw, "status": "accepted"})
            except sqlite3.Error as exc:
                log.error("command %s: the audit log cannot be written (%s); not executed", command.id, exc)
                result = {**base, "status": "failed", "reason": "audit-unavailable",
                          "message": "the audit log cannot be written, so nothing is executed"}
                await self._finish(command.id, result, audit=False)
                return
            for incoming in self._running.get(command.id, []):
                incoming.acknowledge()  # it is in the log: a crash from now on finds it there, not at the broker
            if self._wall() > deadline:  # it waited (for the disk) past its expiry: still never executed
                result = {**base, "status": "refused", "reason": "expired", "message": "expired before it could "
                                                                                        "be sent to the device"}
            else:
                result = await self._write(command, target, canonical, raw, base)
                if command.circuit is not None and result["status"] == "done" and self.circuits is not None:
                    until = self._wall() + round((command.duration or 0) * 1000)
                    self.circuits.overridden(command.circuit, canonical, until, command.id)
                    result = {**result, "mode": "override", "override_until": until}
        except asyncio.CancelledError:
            self._running.pop(command.id, None)
            raise
        await self._finish(command.id, result)

    async def _write(self, command: Command, target: _Target, canonical: Value, raw: Value,
                     base: Entry) -> Entry:
        device = target.device
        try:
            self.executed += 1
            back_raw = await target.runner.write(device.config, command.point, raw)
        except WriteRefused as exc:
            return {**base, "status": "refused", "reason": exc.reason, "message": str(exc)}
        except DriverError as exc:
            log.warning("command %s to %s/%s failed: %s", command.id, device.id, command.point, exc)
            return {**base, "status": "failed", "reason": exc.reason, "message": str(exc)}
        back, _ = target.policy.point.transform.convert(back_raw)
        confirmed = target.policy.confirms(canonical, back)
        if not confirmed and target.policy.confirm_within > 0:
            back, confirmed = await self._settle(_Settling(device.id, target.policy, canonical, back))
        if not confirmed:
            log.warning("command %s: %s/%s reads back %r after writing %r", command.id, device.id, command.point,
                        back, canonical)
        return {**base, "status": "done", "confirmation": "confirmed" if confirmed else "mismatch",
                "read_back": back}

    async def _settle(self, settling: _Settling) -> tuple[Value, bool]:
        """The point's value once a poll reads the one written, or the last one read when `confirm_within` passes."""
        self._settling.append(settling)
        try:
            async with asyncio.timeout(settling.policy.confirm_within):
                await settling.reached.wait()
        except TimeoutError:
            pass
        finally:
            self._settling.remove(settling)
        return settling.last, settling.reached.is_set()

    # -- results ----------------------------------------------------------------------------------------------

    def _refuse(self, incoming: IncomingCommand, cid: str | None, command: Command | None, refusal: Refused,
                received: int) -> None:
        described = command.describe() if command is not None else {"id": cid}
        result = {**described, "gateway": self._gateway_id, "received": received, "status": "refused",
                  "reason": refusal.reason, "message": str(refusal)}
        log.info("command %s refused: %s (%s)", cid, refusal.reason, refusal)
        result = {**result, "finished": self._wall()}
        if cid is not None and refusal.reason not in _TRANSIENT:
            self._remember(result)
        self._spawn(self._record_and_answer(result, [incoming]))

    async def _record_and_answer(self, result: Entry, answering: list[IncomingCommand]) -> None:
        """The result goes into the audit log first: what the sender is told is always in the log."""
        await self._record_result(result)
        for incoming in answering:
            self._answer(incoming, result)

    async def _finish(self, cid: str, result: Entry, audit: bool = True) -> None:
        result = {**result, "finished": self._wall()}
        self._remember(result)  # a redelivery from now on is answered with it
        if audit:
            await self._record_result(result)
        for incoming in self._running.pop(cid, []):
            self._answer(incoming, result)

    def _answer(self, incoming: IncomingCommand, result: Entry) -> None:
        incoming.acknowledge()  # the result is in the log (or the log cannot be written: it was said)
        waiter = self._waiters.pop(str(result.get("id")), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(result)
        body = json.dumps(result, separators=(",", ":")).encode()
        own = self._topics.command_result()
        self._reply(own, body, None)
        response = incoming.response_topic
        if response and response != own:
            if response.startswith(f"{self._topics.prefix}/") and not response.startswith(f"{own}/"):
                # Never on the gateway's own topics (a result posing as readings, a status): only below cmd/result.
                log.warning("command %s: response topic %r is inside %s/ and not below %s/; not used",
                            result.get("id"), response[:100], self._topics.prefix, own)
            else:
                self._reply(response, body, incoming.correlation)

    def _remember(self, result: Entry) -> None:
        cid = result.get("id")
        if isinstance(cid, str):
            self._results[cid] = result
            self._results.move_to_end(cid)
            while len(self._results) > _REMEMBERED:
                self._results.popitem(last=False)

    async def _record_result(self, result: Entry) -> None:
        with contextlib.suppress(sqlite3.Error):
            await self._audit_entry("result", result)

    async def _audit_entry(self, kind: str, entry: Entry) -> None:
        await self._audit.append(kind, entry)
        body = {"gateway": self._gateway_id, "kind": kind, **entry}
        self._pipeline.submit_event(self._topics.audit(), lambda seq: json.dumps(
            {**body, "seq": seq}, separators=(",", ":")).encode())

    def _spawn(self, job: Any) -> None:
        task = asyncio.get_running_loop().create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
