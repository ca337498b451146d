"""Adding a protocol is one package and one registration: a toy protocol, registered here, runs end to end."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from drivers import registry
from tests.brokers import Broker
from tests.conftest import SubscriberFactory
from tests.e2e import ASSET, CATALOGUE, running


@pytest.fixture
def toy_registered() -> Iterator[None]:
    registry.register("toy", "tests.toy_protocol:ToyDevice", driver="tests.toy_protocol:ToyDriver")
    try:
        yield
    finally:
        del registry._REGISTRY["toy"]  # leave the registry as the other tests know it


async def test_a_registered_toy_protocol_is_configured_checked_and_run_like_any_other(
        toy_registered: None, broker: Broker, mqtt_subscriber: SubscriberFactory, tmp_path: Path) -> None:
    from gateway.config.errors import ConfigError
    from gateway.config.loader import load_config
    from gateway.config.schema import json_schema

    assert '"const": "toy"' in json.dumps(json_schema("devices"))
    device = {"id": "toy-1", "protocol": "toy", "start": 100, "poll_interval": 0.1, "asset": ASSET,
              "points": [{"name": "count", "indicator": "flow", "step": 2}]}
    (tmp_path / "devices.yaml").write_text(yaml.safe_dump({"devices": [{**device, "stepp": 1}]}))
    main = {"gateway": {"id": "toy-gw", "state_dir": str(tmp_path / "state")},
            "mqtt": {"host": "127.0.0.1", "port": broker.port}, "catalogue": str(CATALOGUE),
            "include": ["devices.yaml"]}
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(main))
    with pytest.raises(ConfigError, match=r"devices\[0\]\.stepp: unknown key 'stepp'.*start"):
        load_config(tmp_path / "gateway.yaml")  # its model is validated like every other protocol's

    (tmp_path / "devices.yaml").write_text(yaml.safe_dump({"devices": [device]}))
    topic = "city/water-supply/ps01/ps01-station/data"
    subscriber = await mqtt_subscriber(broker, topic)
    async with running(tmp_path / "gateway.yaml"):
        await subscriber.wait_count(2, topic)
    values = [r["value"] for m in subscriber.messages if m.topic == topic for r in json.loads(m.payload)["readings"]]
    assert values[:2] == [102, 104]
