"""The composition root: the one place where configuration becomes running parts.

    drivers (one LinkPoller task per physical link)
        → pipeline (mapping → processing → encoding → group commit)
            → buffer (SQLite)
                → publisher (MQTT)

Sinks start before sources; on shutdown sources stop first, what was read is
committed, and the publisher goes last (announcing `offline`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from drivers.registry import protocols
from gateway.buffer import Buffer
from gateway.config.loader import GatewayConfig
from gateway.mapping import DeviceMapper, asset_of
from gateway.model.devices import DeviceBase
from gateway.model.driver import Driver
from gateway.model.readings import Sample, now_ms
from gateway.payload import encode_asset_description, encode_json
from gateway.pipeline import Pipeline
from gateway.processing import Processor, derived_by_asset
from gateway.publisher import Publisher
from gateway.scheduler import DeviceStatus, LinkPoller
from gateway.state import DeviceRegistry
from gateway.systemd import notify
from gateway.topics import Topics

log = logging.getLogger(__name__)

# Seconds between refreshes of the retained device status (state, polls, protocol counters).
HEALTH_INTERVAL = 60.0
# Seconds a stopping gateway waits for the broker to acknowledge what is still buffered.
FLUSH_LIMIT = 5.0


def links(devices: Sequence[DeviceBase]) -> dict[str, list[DeviceBase]]:
    """Enabled devices grouped by the physical link they share."""
    grouped: dict[str, list[DeviceBase]] = defaultdict(list)
    for device in devices:
        if device.enabled:
            grouped[device.link_id()].append(device)
    return dict(grouped)


def make_driver(devices: Sequence[DeviceBase], state_dir: Path | None = None) -> Driver:
    """The driver for one link, importing its protocol library only now."""
    driver = protocols()[devices[0].protocol].driver_class()(devices)
    driver.state_dir = state_dir
    return driver


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        settings = config.main
        self.gateway_id = settings.gateway.id
        self.topics = Topics(settings.mqtt.topic_prefix, self.gateway_id)
        self.pollers: list[LinkPoller] = []
        self.pipeline: Pipeline | None = None
        self.publisher: Publisher | None = None
        self._registry: DeviceRegistry | None = None
        self._drivers: dict[str, Driver] = {}  # by device id

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; raise if any part fails unexpectedly."""
        config = self.config
        async with contextlib.AsyncExitStack() as resources:
            buffer = await Buffer.open(config.buffer_path, config.main.buffer.max_bytes,
                                       config.main.buffer.synchronous)
            resources.push_async_callback(buffer.close)
            self._registry = DeviceRegistry(config.state_dir / "devices.json")
            resources.callback(self._registry.close)
            mappers = {d.id: DeviceMapper(d, config.catalogue) for d in config.devices if d.enabled}
            self.publisher = Publisher(config.main.mqtt, self.gateway_id, buffer, self.topics.gateway_status())
            processor = Processor(config.catalogue, config.devices, derived=derived_by_asset(config.devices))
            self.pipeline = Pipeline(self.gateway_id, self.topics, mappers, buffer, processor,
                                     on_active_alarms=self.publisher.set_retained)
            self._announce_assets()
            self.pipeline.announce_alarm_states()
            for link, devices in links(config.devices).items():
                driver = make_driver(devices, config.state_dir)
                self._drivers.update((device.id, driver) for device in devices)
                self.pollers.append(LinkPoller(link, driver, self._on_samples, self._on_failure, self._on_status))
            log.info("gateway %s starting: %d devices on %d links", self.gateway_id, len(mappers), len(self.pollers))
            await self._run_tasks(stop, self.publisher, self.pipeline)
            log.info("gateway %s stopped", self.gateway_id)

    async def _run_tasks(self, stop: asyncio.Event, publisher: Publisher, pipeline: Pipeline) -> None:
        """Sinks start before sources; on the way out sources stop first and the publisher last."""
        sending = asyncio.create_task(publisher.run(), name="publisher")
        committing = asyncio.create_task(pipeline.run(), name="pipeline")
        timers = [asyncio.create_task(pipeline.run_clock(), name="processing-clock"),
                  asyncio.create_task(self._report_health(), name="device-health")]
        sources = [asyncio.create_task(p.run(), name=f"link {p.name}") for p in self.pollers]
        notify("READY=1")
        try:
            await _until_stopped_or_failed(stop, [sending, committing, *timers, *sources])
        finally:
            notify("STOPPING=1")
            await _cancel_all(sources)
            await _cancel_all(timers)  # no more windows, alarm timers or health reports
            await _cancel_all([committing])  # the pipeline commits what the sources handed over
            if not sending.done() and not await publisher.flush(FLUSH_LIMIT):
                log.info("stopping with readings still in the buffer; they are sent after the next start")
            await _cancel_all([sending])  # the publisher announces offline and disconnects

    def _announce_assets(self) -> None:
        assert self.publisher is not None
        by_asset: dict[str, list[DeviceBase]] = defaultdict(list)
        for device in self.config.devices:
            if device.enabled:
                by_asset[device.asset.id].append(device)
        for devices in by_asset.values():
            derived = [rule for device in devices for rule in device.derived]
            body = encode_asset_description(self.gateway_id, devices, self.config.catalogue, now_ms(), derived)
            self.publisher.set_retained(self.topics.meta(asset_of(devices[0])), body)

    def _on_samples(self, device: DeviceBase, samples: Sequence[Sample], receive_time_ms: int) -> None:
        assert self.pipeline is not None
        self.pipeline.submit(device.id, samples, receive_time_ms)

    def _on_failure(self, device: DeviceBase, reason: str, receive_time_ms: int) -> None:
        assert self.pipeline is not None
        self.pipeline.submit_failure(device.id, reason, receive_time_ms)

    def _on_status(self, status: DeviceStatus) -> None:
        """A device changed state: publish it (retained) and remember it across restarts."""
        assert self._registry is not None
        self._registry.record(self._publish_status(status))

    def _publish_status(self, status: DeviceStatus) -> dict[str, object]:
        assert self.publisher is not None
        device = status.device
        document = status.as_dict(self._drivers[device.id].device_counters(device))
        self.publisher.set_retained(self.topics.device_status(device.id), encode_json(document))
        return document

    async def _report_health(self) -> None:
        """Refresh every device's retained status now and then, so its counters stay current."""
        while True:
            await asyncio.sleep(HEALTH_INTERVAL)
            for poller in self.pollers:
                for status in poller.statuses:
                    self._publish_status(status)


async def _until_stopped_or_failed(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    stopper = asyncio.create_task(stop.wait(), name="stop")
    try:
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    for task in done:
        if task is not stopper:
            # A part ended by itself: that is a failure (they run until cancelled). Surface it.
            error = task.exception()
            raise RuntimeError(f"{task.get_name()} stopped unexpectedly") from error


async def _cancel_all(tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            log.error("%s failed while stopping: %r", task.get_name(), result)
