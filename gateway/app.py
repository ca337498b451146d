"""The composition root: the one place where configuration becomes running parts.

    drivers (one LinkRunner task group per physical link)
        → pipeline (mapping → processing → encoding → group commit)
            → buffer (SQLite)
                → publisher (MQTT)

Sinks start before sources and stop after them, which the nesting of the task
groups gives: the publisher and the pipeline run in the outer group, the links
and timers in the inner one. On shutdown the sources stop first, the pipeline
commits what was read, and the publisher goes last (announcing `offline`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from drivers.registry import make_driver
from gateway.attributes import AttributeBoard
from gateway.buffer import Buffer
from gateway.clock import ClockWatch, assumed_clock_state, system_clock_state
from gateway.commands.audit import AUDIT_FILE, AuditLog
from gateway.commands.service import CommandService, command_secret
from gateway.config.loader import GatewayConfig
from gateway.gateway_alarms import GatewayAlarms
from gateway.links import DeviceStatus, LinkRunner
from gateway.mapping import DeviceMapper
from gateway.model.devices import DeviceBase
from gateway.model.driver import Driver
from gateway.model.readings import Sample, now_ms
from gateway.model.resolved import AttributeSource, ResolvedAsset, ResolvedDevice
from gateway.payload import encode_asset_description, encode_json
from gateway.pipeline import Pipeline
from gateway.processing import Processor
from gateway.publisher import CommandChannel, Publisher
from gateway.report import GatewayReport, LatestReadings
from gateway.state import DeviceRegistry
from gateway.statedir import StateLock
from gateway.status.listener import StatusListener
from gateway.status.process import LoopLag
from gateway.systemd import notify
from gateway.tasks import cancel_requests, restore_cancel_requests
from gateway.topics import Topics
from gateway.watchdog import Check, Watchdog, watchdog_interval

if TYPE_CHECKING:
    from gateway.lighting import LightingController

log = logging.getLogger(__name__)

# Seconds between refreshes of the retained device status (state, polls, protocol counters).
HEALTH_INTERVAL = 60.0
# Back-pressure: polls wait while more than this many in-flight windows of messages committed since the broker
# connected wait for its acknowledgement (256 messages by default: about a second of a large site's polls).
BACKLOG_WINDOWS = 8
# Seconds a stopping gateway waits for the broker to acknowledge what is still buffered.
FLUSH_LIMIT = 5.0
# The active alarms of the assets and of the gateway itself, kept across restarts (in the state directory).
ALARM_FILE = "active-alarms.json"
GATEWAY_ALARM_FILE = "gateway-alarms.json"


def links(devices: Sequence[ResolvedDevice[DeviceBase]],
          attributes: Sequence[AttributeSource] = ()) -> dict[str, list[DeviceBase]]:
    """Enabled devices grouped by the physical link they share; the readers of their attributes beside them."""
    grouped: dict[str, list[DeviceBase]] = defaultdict(list)
    for device in devices:
        if device.config.enabled:
            grouped[device.config.link_id()].append(device.config)
    for source in attributes:
        grouped[source.config.link_id()].append(source.config)
    return dict(grouped)


class _StopRequested(Exception):
    """Raised inside the sources' task group to end it when the gateway is told to stop."""


class Gateway:
    def __init__(self, config: GatewayConfig, clock: ClockWatch | None = None,
                 command_time: Callable[[], int] = now_ms) -> None:
        """`clock`: how the system clock is watched (tests give one whose answers they control);
        `command_time`: the wall clock (UTC ms) commands' ages are judged by (tests move it)."""
        self.config = config
        settings = config.main
        self.gateway_id = settings.gateway.id
        self.topics = Topics(settings.mqtt.topic_prefix, self.gateway_id)
        self.runners: list[LinkRunner[Any]] = []
        self.pipeline: Pipeline | None = None
        self.publisher: Publisher | None = None
        self._registry: DeviceRegistry | None = None
        self._drivers: dict[str, Driver[Any]] = {}  # by device id
        self.attributes = AttributeBoard(config.attribute_sources)
        self.commands: CommandService | None = None
        self.command_channel: CommandChannel | None = None
        self._command_time = command_time
        self.lighting: LightingController | None = None
        self.watchdog: Watchdog | None = None  # when systemd watches us (WatchdogSec=)
        probe = system_clock_state if config.main.clock.source == "system" else assumed_clock_state
        self.clock = clock if clock is not None else ClockWatch(probe)
        self.report: GatewayReport | None = None  # what the status listener and the MQTT gateway status show
        self._loop_lag = LoopLag()
        self.status_listener = StatusListener(config.main.status) if config.main.status.enabled else None

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; raise if any part fails unexpectedly."""
        config = self.config
        async with contextlib.AsyncExitStack() as resources:
            # Before anything in the state directory is opened: one gateway per state directory.
            resources.enter_context(StateLock(config.state_dir))
            buffer = await Buffer.open(config.buffer_path, config.main.buffer.max_bytes,
                                       config.main.buffer.synchronous, config.main.buffer.free_share)
            resources.push_async_callback(buffer.close)
            self._registry = DeviceRegistry(config.state_dir / "devices.json")
            resources.callback(self._registry.close)
            mappers = {d.id: DeviceMapper(d) for d in config.enabled_devices}
            self.publisher = Publisher(config.main.mqtt, self.gateway_id, buffer, self.topics.gateway_status())
            processor = Processor(config.assets, alarm_file=config.state_dir / ALARM_FILE)
            readings = LatestReadings(keep=config.main.status.enabled)
            gateway_alarms = GatewayAlarms(config.state_dir / GATEWAY_ALARM_FILE)
            self.pipeline = Pipeline(self.gateway_id, self.topics, mappers, buffer, processor,
                                     on_active_alarms=self.publisher.set_retained, clock=self.clock,
                                     gateway_alarms=gateway_alarms, on_readings=readings.observe)
            self._announce_assets()
            self.pipeline.announce_alarm_states()
            context = config.link_context
            backpressure = _Backpressure(self.publisher, BACKLOG_WINDOWS * config.main.mqtt.max_inflight)
            runners: dict[str, LinkRunner[Any]] = {}
            for link, devices in links(config.devices, config.attribute_sources).items():
                driver = make_driver(devices, context)
                self._drivers.update((device.id, driver) for device in devices)
                self.runners.append(LinkRunner(link, driver, self._on_samples, self._on_failure, self._on_status,
                                               pace=backpressure))
                runners.update((device.id, self.runners[-1]) for device in devices)
            if _writes_anything(config):
                await self._command_path(resources, runners)
            self.report = GatewayReport(self.gateway_id, config.main.gateway.name, config.main.buffer.max_bytes,
                                        self.publisher, buffer, processor, self._statuses, self._drivers, readings,
                                        self._loop_lag, self.clock, gateway_alarms)
            log.info("gateway %s starting: %d devices on %d links", self.gateway_id, len(mappers), len(self.runners))
            self.watchdog = _watchdog(buffer, self.pipeline)
            await self._run_parts(stop, self.publisher, self.pipeline)
            log.info("gateway %s stopped", self.gateway_id)

    async def _command_path(self, resources: contextlib.AsyncExitStack, runners: dict[str, LinkRunner[Any]]) -> None:
        """The command service and its MQTT connection (README, Commands)."""
        assert self.pipeline is not None
        config, settings = self.config, self.config.main.commands
        secret = command_secret(settings, os.environ)
        audit = await AuditLog.open(config.state_dir / AUDIT_FILE, settings.audit_max_entries)
        resources.push_async_callback(audit.close)
        channel_id = f"{config.main.mqtt.client_id or self.gateway_id}-cmd"
        self.commands = CommandService(self.gateway_id, self.topics, settings, config.enabled_devices, runners,
                                       audit, self.pipeline, self.clock, self._reply, secret=secret,
                                       wall_ms=self._command_time)
        self.pipeline.observers.append(self.commands.observe)
        if settings.enabled:
            self.command_channel = CommandChannel(config.main.mqtt, channel_id, self.topics.command(),
                                                  settings.session_expiry, self.commands.on_command,
                                                  mqtt5=settings.mqtt_version == "5")
        if config.main.lighting.circuits:
            from gateway.lighting import LightingController, schedules  # imports astral

            assert self.publisher is not None
            self.lighting = LightingController(
                self.topics, config.main.lighting, schedules(config.main.lighting, config.main.site,
                                                             config.enabled_devices),
                self.commands, self.clock, self.publisher.set_retained, wall_ms=self._command_time)
            self.pipeline.observers.append(self.lighting.observe)
            self.clock.on_jump.append(lambda jump: self.lighting.poke() if self.lighting is not None else None)

    def _reply(self, topic: str, body: bytes, correlation: bytes | None) -> bool:
        return self.command_channel is not None and self.command_channel.reply(topic, body, correlation)

    async def _listen_for_commands(self) -> None:
        assert self.commands is not None and self.command_channel is not None
        await self.commands.wait_ready()  # what an earlier run left unfinished is audited first
        await self.command_channel.run()

    async def _run_parts(self, stop: asyncio.Event, publisher: Publisher, pipeline: Pipeline) -> None:
        """The sinks in the outer group; the sources (and the timers feeding the sinks) in the inner one."""
        async with asyncio.TaskGroup() as sinks:
            sending = sinks.create_task(publisher.run(), name="publisher")
            committing = sinks.create_task(pipeline.run(), name="pipeline")
            await self._run_sources(stop, pipeline)
            notify("STOPPING=1")
            committing.cancel()  # the pipeline commits what the sources handed over, then ends
            await asyncio.wait([committing])
            if not await publisher.flush(FLUSH_LIMIT):
                log.info("stopping with readings still in the buffer; they are sent after the next start")
            sending.cancel()  # the publisher announces offline and disconnects

    async def _run_sources(self, stop: asyncio.Event, pipeline: Pipeline) -> None:
        cancel_requests_before = cancel_requests()
        try:
            async with asyncio.TaskGroup() as sources:
                sources.create_task(_raise_when_set(stop), name="stop")
                sources.create_task(pipeline.run_clock(), name="processing-clock")
                sources.create_task(self._report_health(), name="device-health")
                sources.create_task(self.clock.run(self.config.main.clock.check_interval), name="clock")
                if self.watchdog is not None:
                    sources.create_task(self.watchdog.run(), name="watchdog")
                sources.create_task(self._loop_lag.run(), name="event-loop-lag")
                if self.status_listener is not None:
                    assert self.report is not None
                    sources.create_task(self.status_listener.run(self.report), name="status-listener")
                for runner in self.runners:
                    sources.create_task(runner.run(), name=f"link {runner.name}")
                if self.commands is not None:
                    sources.create_task(self.commands.run(), name="commands")
                if self.command_channel is not None:
                    sources.create_task(self._listen_for_commands(), name="command-channel")
                if self.lighting is not None:
                    sources.create_task(self.lighting.run(), name="lighting")
                notify("READY=1")
                if self.report is not None:
                    self.report.running = True
        except* _StopRequested:
            restore_cancel_requests(cancel_requests_before)

    def _announce_assets(self) -> None:
        assert self.publisher is not None
        self.publisher.describe_with(self._descriptions)

    def _descriptions(self) -> Iterator[tuple[str, bytes]]:
        """The retained self-description of every asset, made when the publisher (re)connects."""
        for asset in self.config.assets:
            yield self.topics.meta(asset.ref), self._description(asset)

    def _description(self, asset: ResolvedAsset) -> bytes:
        return encode_asset_description(self.gateway_id, asset, now_ms(), self.attributes.described(asset.ref.asset))

    def _on_samples(self, device: DeviceBase, samples: Sequence[Sample], receive_time_ms: int) -> None:
        assert self.pipeline is not None
        if self.attributes.reads(device.id):
            self._on_attributes(device.id, samples, receive_time_ms)
            return
        self.pipeline.submit(device.id, samples, receive_time_ms)

    def _on_attributes(self, device_id: str, samples: Sequence[Sample], receive_time_ms: int) -> None:
        """Attributes were read: when one changed, the asset's retained self-description says so."""
        assert self.publisher is not None
        changed = self.attributes.update(device_id, samples, receive_time_ms)
        for asset in self.config.assets:
            if asset.ref.asset == changed:
                self.publisher.set_retained(self.topics.meta(asset.ref), self._description(asset))

    def _on_failure(self, device: DeviceBase, reason: str, receive_time_ms: int) -> None:
        assert self.pipeline is not None
        if not self.attributes.reads(device.id):  # attributes not read keep the values read before
            self.pipeline.submit_failure(device.id, reason, receive_time_ms)

    def _on_status(self, status: DeviceStatus[Any]) -> None:
        """A device changed state: publish it (retained) and remember it across restarts."""
        assert self._registry is not None
        if not self.attributes.reads(status.device.id):  # an attribute reader is no device of its own
            self._registry.record(self._publish_status(status))

    def _publish_status(self, status: DeviceStatus[Any]) -> dict[str, object]:
        assert self.publisher is not None
        device = status.device
        document = status.as_dict(self._drivers[device.id].counters(device))
        self.publisher.set_retained(self.topics.device_status(device.id), encode_json(document))
        return document

    def _statuses(self) -> Iterator[DeviceStatus[Any]]:
        """Every device's status; the readers of attributes are no devices of their own."""
        for runner in self.runners:
            yield from (status for status in runner.statuses if not self.attributes.reads(status.device.id))

    async def _report_health(self) -> None:
        """Refresh the retained gateway status's figures (buffer, process, clock) at once and every
        HEALTH_INTERVAL, and every device's retained status then too, so their counters stay current. A change
        of the clock's synchronisation is told at once."""
        assert self.publisher is not None and self.report is not None
        clock_changed = asyncio.Event()
        self.clock.on_state.append(lambda _state: clock_changed.set())
        while True:
            self.publisher.update_status(await self.report.mqtt_health())
            try:
                async with asyncio.timeout(HEALTH_INTERVAL):
                    await clock_changed.wait()
                clock_changed.clear()
            except TimeoutError:
                for status in self._statuses():
                    self._publish_status(status)


class _Backpressure:
    """Before each poll: while the broker is connected but what the gateway committed since has outgrown what
    it gets acknowledged (more than `high_water` messages), polls wait for acknowledgements. The publisher gets
    the loop, the polls come late (their devices are reported overrun), and the cap never drops a reading for
    want of the gateway's own CPU."""

    def __init__(self, publisher: Publisher, high_water: int) -> None:
        self._publisher = publisher
        self._high_water = high_water

    def holding(self) -> bool:
        return self._publisher.live_backlog() > self._high_water

    async def room(self) -> None:
        await self._publisher.acknowledged.wait()


def _writes_anything(config: GatewayConfig) -> bool:
    """Whether the command path is worth its connection: commands are on and some point may be written, or a
    lighting circuit switches one. A site that declares nothing writable subscribes to no command topic."""
    if config.main.lighting.circuits:
        return True
    return config.main.commands.enabled and any(point.config.writable for device in config.enabled_devices
                                                for point in device.points)


def _watchdog(buffer: Buffer, pipeline: Pipeline) -> Watchdog | None:
    interval = watchdog_interval()
    if interval is None:
        return None
    within_ms = int(interval * 1000)
    return Watchdog(interval, [Check("the buffer's SQLite thread", buffer.answers),
                               Check("the pipeline", lambda: pipeline.making_progress(within_ms))])


async def _raise_when_set(stop: asyncio.Event) -> None:
    await stop.wait()
    raise _StopRequested
