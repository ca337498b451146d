"""Running the links: each physical link is served by one `LinkRunner`, a task group of its own.

Inside a link's group, one task makes every request (so never two requests are
outstanding on one link) and, when some devices push, one task listens to them
(`Pusher.run`). Links are independent tasks, so a dead device never delays a
device on another link.

Polling: devices are served earliest-due first. Each keeps its own schedule,
anchored to its first poll so it does not drift; a missed slot is skipped, not
caught up. A device that fails while the link stays up (a silent unit behind a
Modbus gateway, a meter that does not answer on a shared bus) is retried with
capped exponential back-off on its own; its readings go out with bad quality and
its state change is logged once. A device that answers but gives no good sample in a
poll (every request refused with an exception, every value undecodable) is
`degraded`, not online: the runner learns it from the samples' qualities, and the
device keeps its poll schedule, since it answers quickly.

A lost link (the connection dropped, the port vanished, a push listener ended)
ends the link's group: the runner closes the driver, reports the pushing
devices as failing, and opens the link again. A link that was healthy is
retried after a short random pause (so a city's gateways do not all come back
in the same instant), then every 0.5, 1, 2 s (at most) while it keeps failing;
an attempt is also made whenever a device's poll is due, and each due device
that cannot be reached gets its bad readings and its own back-off (doubling up
to its `backoff_max`). Once the link is open again, every failing device is
polled at once.

An unexpected exception in a driver (a bug) is logged with its traceback and
handled like a lost link, so one faulty protocol cannot stop the others.

Writes (`LinkRunner.write`) are queued to the link's request task, which serves them before the next
poll, one at a time, so a write never overlaps a poll on the same link; on a link whose devices only
push, a request task of its own serves them. A write to a link that is not open fails at once: it is
never kept for later (a command must not act when it is no longer expected).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from gateway.model.devices import DeviceBase
from gateway.model.driver import D, Driver, DriverError, Poller, Pusher, WriteRefused
from gateway.model.readings import Quality, Sample, Value, now_ms
from gateway.tasks import cancel_requests, restore_cancel_requests

log = logging.getLogger(__name__)

# How many request timeouts one whole poll may take before the link is deemed stuck.
_STUCK_POLL_FACTOR = 20
# After a healthy link is lost: a random pause of up to this many seconds before the first attempt.
FIRST_RETRY = 0.25
# After a failed attempt: the first step of the link's back-off, doubling up to RETRY_CAP (or the devices'
# backoff_max when lower). Opening a dead link costs a refused connect; a device back after an outage is
# polled again within about 2 s. Its bad readings meanwhile come at its own back-off, not at every attempt.
RETRY_STEP = 0.5
RETRY_CAP = 2.0
# A pushing device has no poll grid: while it fails, its bad readings come this often at first.
PUSH_RETRY = 1.0
# How many request timeouts one write and its read-back may take before the link is deemed stuck.
_STUCK_WRITE_FACTOR = 4
# Polls in a row a whole interval late before a device is reported overrun (and on time before it is not).
OVERRUN_POLLS = 3


class DeviceState(enum.StrEnum):
    STARTING = "starting"
    ONLINE = "online"
    DEGRADED = "degraded"  # answers, but no point of its last poll read good (refused, undecodable)
    FAILING = "failing"


@dataclass(slots=True)
class _Write(Generic[D]):
    device: D
    point: str
    value: Value
    done: asyncio.Future[Value]


@dataclass
class DeviceStatus(Generic[D]):
    device: D
    state: DeviceState = DeviceState.STARTING
    since_ms: int = field(default_factory=now_ms)
    reason: str | None = None
    message: str | None = None
    consecutive_failures: int = 0
    polls: int = 0  # polls answered (for a pushing device: batches received)
    failures: int = 0
    poll_seconds: float = 0.0  # time the answered polls took, together (with `polls`: their mean)
    last_poll_seconds: float | None = None
    next_due: float = 0.0  # monotonic seconds
    # Polled later than its grid: the gateway (or the link) cannot keep up with the interval configured.
    overrun: bool = False
    achieved_interval: float | None = None  # seconds between the starts of its last two polls
    last_start: float | None = None
    _late_polls: int = 0  # consecutive polls a whole interval late (or on time, while overrun)

    def as_dict(self, counters: dict[str, int] | None = None) -> dict[str, object]:
        """The device's status document; `counters` are the driver's protocol counters for it."""
        return {
            "device": self.device.id, "state": self.state.value, "since": self.since_ms,
            "reason": self.reason, "message": self.message,
            "consecutive_failures": self.consecutive_failures, "polls": self.polls, "failures": self.failures,
            "overrun": self.overrun,
            "achieved_interval": None if self.achieved_interval is None else round(self.achieved_interval, 3),
            "counters": counters or {},
        }


SamplesHandler = Callable[[DeviceBase, Sequence[Sample], int], None]
FailureHandler = Callable[[DeviceBase, str, int], None]
StatusHandler = Callable[[DeviceStatus[Any]], None]


class Pace(Protocol):
    """Back-pressure as a link meets it (the composition root says when to hold the polls)."""

    def holding(self) -> bool:
        """Whether polls wait now."""

    async def room(self) -> None:
        """Return once there may be room again (acknowledgements came, or the connection went)."""


class LinkRunner(Generic[D]):
    """Owns one driver (one physical link): opens it, serves its devices, and opens it again when lost."""

    def __init__(self, name: str, driver: Driver[D], on_samples: SamplesHandler, on_failure: FailureHandler,
                 on_status: StatusHandler, clock: Callable[[], float] = time.monotonic,
                 pace: Pace | None = None) -> None:
        """`pace`: asked before each poll; while it holds (the gateway's own backlog says so) the poll waits
        (back-pressure: it comes late and the device is reported overrun, nothing is lost); writes do not."""
        self.name = name
        self.driver = driver
        self.statuses: list[DeviceStatus[D]] = [DeviceStatus(device) for device in driver.devices]
        self._polled = [s for s in self.statuses if not s.device.pushes]
        self._pushed = {s.device.id: s for s in self.statuses if s.device.pushes}
        if self._polled and not isinstance(driver, Poller):
            raise TypeError(f"link {name}: {type(driver).__name__} cannot poll {self._polled[0].device.id}")
        if self._pushed and not isinstance(driver, Pusher):
            raise TypeError(f"link {name}: {type(driver).__name__} cannot listen to pushing devices")
        self._on_samples = on_samples
        self._on_failure = on_failure
        self._on_status = on_status
        self._clock = clock
        self._pace = pace
        self._open = False
        self._attempts = 0  # failed attempts to open the link since it was last open
        self._retry_at = 0.0  # earliest next attempt to open it (monotonic seconds)
        self._generation = 0  # counts opens, so a listener of a connection that is gone goes quiet
        self._writes: list[_Write[D]] = []  # waiting for the request task
        self._write_ready = asyncio.Event()

    async def run(self) -> None:
        """Serve the link until cancelled."""
        start = self._clock()
        for status in self.statuses:
            status.next_due = start
        self._retry_at = start
        try:
            while True:
                await self._sleep_until(self._next_attempt())
                if await self._opened():
                    lost = await self._serve()
                    await self._close()
                    self._link_lost(lost)
        finally:
            self._drop_writes(DriverError("the gateway is stopping", "link-down", link_lost=False))
            await self._close()

    async def write(self, device: D, point: str, value: Value) -> Value:
        """Write the driver's `value` to `point` through the link's request task and return what it read back.

        Raises DriverError (reason `link-down`) at once when the link is not open, the driver's DriverError
        or WriteRefused otherwise. Cancelling the caller does not take back a write already handed over."""
        if not self._open:
            raise DriverError(f"link {self.name} is not connected", "link-down", link_lost=False)
        job: _Write[D] = _Write(device, point, value, asyncio.get_running_loop().create_future())
        self._writes.append(job)
        self._write_ready.set()
        return await asyncio.shield(job.done)

    # -- opening -----------------------------------------------------------------------------------------------

    def _next_attempt(self) -> float:
        """When to try the link next: at its own retry time, or sooner when a device's poll is due."""
        return min(self._retry_at, min(status.next_due for status in self.statuses))

    async def _sleep_until(self, moment: float) -> None:
        delay = moment - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)  # waiting for a schedule, not for an event

    async def _opened(self) -> bool:
        started = self._clock()
        try:
            async with asyncio.timeout(max(s.device.timeout for s in self.statuses) * _STUCK_POLL_FACTOR):
                await self.driver.open()
        except (DriverError, TimeoutError) as exc:
            error = exc if isinstance(exc, DriverError) else DriverError("opening the link did not finish", "timeout")
            _honour_cancellation()
            await self.driver.close()  # whatever the attempt left half open
            self._attempt_failed(error, started)
            return False
        self._open = True
        _honour_cancellation()  # a stop that came while connecting, swallowed by the library
        self._attempts = 0
        self._generation += 1
        now = self._clock()
        for status in self.statuses:
            if status.state is DeviceState.FAILING:
                status.next_due = now  # the link is back: poll at once, not at the end of a back-off
        return True

    def _attempt_failed(self, error: DriverError, started: float) -> None:
        self._attempts += 1
        cap = min(RETRY_CAP, *(status.device.backoff_max for status in self.statuses))
        step = min(cap, RETRY_STEP * 2 ** min(self._attempts - 1, 32))
        now = self._clock()
        self._retry_at = now + random.uniform(step / 2, step)
        for status in self.statuses:
            if status.next_due <= now:
                self._failed(status, error, started)

    # -- serving -------------------------------------------------------------------------------------------------

    async def _serve(self) -> DriverError:
        """Poll and listen until the link is lost; return why."""
        lost: DriverError | None = None
        cancel_requests_before = cancel_requests()
        try:
            async with asyncio.TaskGroup() as link:
                link.create_task(self._poll_forever() if self._polled else self._write_forever(),
                                 name=f"link {self.name}: requests")
                if self._pushed:
                    link.create_task(self._listen(), name=f"link {self.name}: push")
        except* DriverError as group:
            lost = _first(group, DriverError)
        except* Exception as group:
            failure = _first(group, Exception)
            log.error("link %s: unexpected failure; opening the link again", self.name, exc_info=failure)
            lost = DriverError(f"internal error: {failure!r}", "internal-error")
        restore_cancel_requests(cancel_requests_before)
        assert lost is not None, "the link's tasks only end by failing"
        self._drop_writes(lost)
        return lost

    async def _poll_forever(self) -> None:
        assert isinstance(self.driver, Poller)
        driver: Poller[D] = self.driver
        while True:
            status = min(self._polled, key=lambda s: s.next_due)
            while await self._write_or_sleep_until(status.next_due):
                await self._serve_writes()
            if self._pace is not None:
                await self._paced(status)
            await self._poll(driver, status)
            _honour_cancellation()

    async def _write_forever(self) -> None:
        """The request task of a link whose devices only push: it makes the writes."""
        while True:
            await self._write_ready.wait()
            await self._serve_writes()

    async def _write_or_sleep_until(self, moment: float) -> bool:
        """Wait until `moment`; True as soon as a write is waiting (at once if one already is)."""
        if self._writes:
            return True
        delay = moment - self._clock()
        if delay <= 0:
            return False
        self._write_ready.clear()
        try:
            async with asyncio.timeout(delay):  # waiting for a schedule, or for a write to make
                await self._write_ready.wait()
        except TimeoutError:
            return bool(self._writes)
        return True

    async def _serve_writes(self) -> None:
        while self._writes:
            job = self._writes.pop(0)
            if job.done.done():
                continue
            try:
                async with asyncio.timeout(job.device.timeout * _STUCK_WRITE_FACTOR) as guard:
                    job.done.set_result(await self.driver.write(job.device, job.point, job.value))
            except DriverError as exc:
                job.done.set_exception(exc)
                if exc.link_lost:
                    raise
            except TimeoutError:
                if not guard.expired():
                    raise
                stuck = DriverError(f"write took longer than {job.device.timeout * _STUCK_WRITE_FACTOR:g} s",
                                    "timeout")
                job.done.set_exception(stuck)
                raise stuck from None
            except Exception as exc:  # WriteRefused, or a bug in the driver: the caller hears of it either way
                job.done.set_exception(exc)
                if not isinstance(exc, WriteRefused):
                    raise
            _honour_cancellation()
        self._write_ready.clear()

    def _drop_writes(self, error: DriverError) -> None:
        """The link is gone: writes still waiting fail (they are never made later)."""
        for job in self._writes:
            if not job.done.done():
                job.done.set_exception(DriverError(f"link {self.name} lost before the write: {error}",
                                                   "link-down", link_lost=False))
        self._writes.clear()

    async def _poll(self, driver: Poller[D], status: DeviceStatus[D]) -> None:
        device = status.device
        started = self._clock()
        self._follow_schedule(status, started)
        try:
            # A safety net only: drivers enforce the per-request timeout themselves.
            async with asyncio.timeout(device.timeout * _STUCK_POLL_FACTOR) as guard:
                samples = await driver.read(device)
        except DriverError as exc:
            self._failed(status, exc, started)
            if exc.link_lost:
                raise
            return
        except TimeoutError:
            if not guard.expired():
                raise  # not our safety net: a driver let its own timeout escape, which is a bug to surface
            stuck = DriverError(f"poll took longer than {device.timeout * _STUCK_POLL_FACTOR:g} s", "timeout")
            self._failed(status, stuck, started)
            raise stuck from None
        status.polls += 1
        status.last_poll_seconds = self._clock() - started
        status.poll_seconds += status.last_poll_seconds
        self._on_samples(device, samples, now_ms())
        self._answering(status, samples)
        status.next_due = _next_slot(status.next_due, device.poll_interval, self._clock())

    async def _listen(self) -> None:
        assert isinstance(self.driver, Pusher)
        pusher: Pusher[D] = self.driver
        generation = self._generation

        def sink(device: D, samples: Sequence[Sample]) -> None:
            status = self._pushed.get(device.id)
            if status is None or generation != self._generation or not self._open:
                return  # late delivery from a connection that is gone, or a device that does not push
            status.polls += 1
            self._on_samples(device, samples, now_ms())
            self._answering(status)

        await pusher.run(sink)
        raise DriverError(f"link {self.name} stopped delivering pushed values")

    # -- failing -----------------------------------------------------------------------------------------------

    def _link_lost(self, error: DriverError) -> None:
        log.info("link %s lost (%s); opening it again", self.name, error)
        now = self._clock()
        self._retry_at = now + random.uniform(0, FIRST_RETRY)
        for status in self._pushed.values():
            self._failed(status, error, now)

    async def _paced(self, status: DeviceStatus[D]) -> None:
        """Wait while back-pressure holds the polls, making the writes that come meanwhile (a command or a
        lighting switch is never held back by a backlog of readings). Held for OVERRUN_POLLS intervals, the
        device is reported overrun at once, not only when its poll finally comes."""
        pace = self._pace
        assert pace is not None
        overrun_at = self._clock() + status.device.poll_interval * OVERRUN_POLLS
        while pace.holding():
            if self._writes:
                await self._serve_writes()
                continue
            if not status.overrun and self._clock() >= overrun_at:
                if status.last_start is not None:
                    status.achieved_interval = self._clock() - status.last_start  # so far
                self._change_overrun(status)
            self._write_ready.clear()
            waiting = {asyncio.ensure_future(pace.room()), asyncio.ensure_future(self._write_ready.wait())}
            try:
                await asyncio.wait(waiting, timeout=None if status.overrun else max(0.0, overrun_at - self._clock()),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for future in waiting:
                    future.cancel()

    def _follow_schedule(self, status: DeviceStatus[D], started: float) -> None:
        """Overrun after OVERRUN_POLLS polls in a row that began a whole interval late; back on schedule after as
        many on time. Each change is logged once and goes out in the device's status."""
        interval = status.device.poll_interval
        previous, status.last_start = status.last_start, started
        if previous is None:
            return  # the first poll, or the first since a failure (whose back-off is not an overrun)
        status.achieved_interval = started - previous
        # Held back (by back-pressure, or by the other devices of the link) or slower than its interval.
        late = started - status.next_due >= interval / 2 or status.achieved_interval >= 1.5 * interval
        status._late_polls = status._late_polls + 1 if late != status.overrun else 0
        if status._late_polls >= OVERRUN_POLLS:
            self._change_overrun(status)

    def _change_overrun(self, status: DeviceStatus[D]) -> None:
        interval = status.device.poll_interval
        status.overrun, status._late_polls = not status.overrun, 0
        if status.overrun:
            log.warning("device %s is polled every %.2f s instead of every %g s: the gateway (or the link) cannot "
                        "keep up; nothing is lost, readings come less often", status.device.id,
                        status.achieved_interval or 0.0, interval)
        else:
            log.info("device %s is polled on schedule again (every %g s)", status.device.id, interval)
        self._on_status(status)

    def _failed(self, status: DeviceStatus[D], error: DriverError, started: float) -> None:
        device = status.device
        status.last_start = None  # the back-off that follows is no overrun
        status.failures += 1
        status.consecutive_failures += 1
        self._on_failure(device, error.reason, now_ms())
        if status.state is not DeviceState.FAILING:
            log.warning("device %s failed: %s (%s); retrying with back-off", device.id, error, error.reason)
            self._set_state(status, DeviceState.FAILING, error.reason, str(error))
        else:
            log.debug("device %s still failing: %s", device.id, error)
        doubling = 2 ** min(status.consecutive_failures - 1, 32)
        if device.pushes:
            backoff = min(device.backoff_max, PUSH_RETRY * doubling)
        else:
            backoff = max(min(device.backoff_max, device.poll_interval * doubling), device.poll_interval)
        status.next_due = max(started, self._clock()) + backoff

    def _answering(self, status: DeviceStatus[D], polled: Sequence[Sample] | None = None) -> None:
        """The device answered; `polled` are the samples of a poll (None for pushed values, which are
        only what changed, so say nothing of the points that did not)."""
        refusal = _nothing_good(polled) if polled is not None else None
        if refusal is not None:
            self._degraded(status, refusal, len(polled or ()))
        elif status.state is DeviceState.DEGRADED and polled is not None and not polled:
            pass  # a poll with nothing to report (its points are backed off) changes nothing
        elif status.state is not DeviceState.ONLINE:
            if status.state is DeviceState.FAILING:
                log.info("device %s is answering again after %d failed attempts", status.device.id,
                         status.consecutive_failures)
            elif status.state is DeviceState.DEGRADED:
                log.info("device %s reads good values again", status.device.id)
            status.consecutive_failures = 0  # before the status goes out: it says the failures are over
            self._set_state(status, DeviceState.ONLINE, None, None)
        status.consecutive_failures = 0

    def _degraded(self, status: DeviceStatus[D], reason: str, points: int) -> None:
        if status.state is DeviceState.DEGRADED and status.reason == reason:
            return
        message = f"answers, but none of the {points} points of its last poll read good ({reason})"
        if status.state is not DeviceState.DEGRADED:
            log.warning("device %s %s", status.device.id, message)
        self._set_state(status, DeviceState.DEGRADED, reason, message)

    def _set_state(self, status: DeviceStatus[D], state: DeviceState, reason: str | None, message: str | None) -> None:
        status.state, status.reason, status.message, status.since_ms = state, reason, message, now_ms()
        self._on_status(status)

    async def _close(self) -> None:
        if self._open:
            self._open = False
            await self.driver.close()


_E = TypeVar("_E", bound=BaseException)


def _first(group: BaseExceptionGroup[_E], kind: type[_E]) -> _E:
    """The first exception of `kind` in a (possibly nested) exception group."""
    for error in group.exceptions:
        found: _E | None = _first(error, kind) if isinstance(error, BaseExceptionGroup) else error
        if isinstance(found, kind):
            return found
    raise AssertionError("an except* clause only sees groups holding its kind")


def _nothing_good(samples: Sequence[Sample]) -> str | None:
    """The most common reason of a poll in which no sample is good; None when one is, or there are none."""
    if not samples or any(sample.quality is not Quality.BAD for sample in samples):
        return None
    reasons = Counter(sample.reason or "bad" for sample in samples)
    return reasons.most_common(1)[0][0]


def _honour_cancellation() -> None:
    """Raise CancelledError if this task was cancelled but a library swallowed it.

    pymodbus and asyncua catch the CancelledError of a connect in progress and
    report a failed connect instead; without this check a stopping gateway
    would go on polling and never stop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _next_slot(previous_due: float, interval: float, now: float) -> float:
    """The next slot on the device's grid that is still in the future (skipping missed ones)."""
    due = previous_due + interval
    if due <= now:
        due += math.ceil((now - due) / interval + 1e-9) * interval
    return due
