"""The MQTT topic layout (documented in README, stable across releases).

    <prefix>/<domain>/<site>/<asset>/data       reading batches, QoS 1
    <prefix>/<domain>/<site>/<asset>/meta       retained self-description of the asset
    <prefix>/<domain>/<site>/<asset>/stats      window statistics and consumption, QoS 1
    <prefix>/<domain>/<site>/<asset>/alarm      alarm events (raised, cleared), QoS 1, sent first after an outage
    <prefix>/<domain>/<site>/<asset>/active-alarms   retained: the alarms raised now
    <prefix>/gateway/<gateway>/status           retained online/offline (Last Will)
    <prefix>/gateway/<gateway>/alarm            the gateway's own alarm events (clock, buffer), QoS 1
    <prefix>/gateway/<gateway>/active-alarms    retained: the gateway's own alarms raised now
    <prefix>/gateway/<gateway>/device/<device>/status   retained per-device state
    <prefix>/gateway/<gateway>/cmd              commands to the gateway (it subscribes), QoS 1
    <prefix>/gateway/<gateway>/cmd/result       each command's result, QoS 1
    <prefix>/gateway/<gateway>/audit            every command and its result, through the buffer, QoS 1
    <prefix>/gateway/<gateway>/lighting/<circuit>   retained: a lighting circuit's mode and next switching times
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.model.readings import AssetRef


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str
    gateway_id: str

    def data(self, asset: AssetRef) -> str:
        return f"{self.prefix}/{asset.path()}/data"

    def meta(self, asset: AssetRef) -> str:
        return f"{self.prefix}/{asset.path()}/meta"

    def stats(self, asset: AssetRef) -> str:
        return f"{self.prefix}/{asset.path()}/stats"

    def alarm(self, asset: AssetRef) -> str:
        return f"{self.prefix}/{asset.path()}/alarm"

    def active_alarms(self, asset: AssetRef) -> str:
        return f"{self.prefix}/{asset.path()}/active-alarms"

    def gateway_status(self) -> str:
        return f"{self.prefix}/gateway/{self.gateway_id}/status"

    def gateway_alarm(self) -> str:
        return f"{self.prefix}/gateway/{self.gateway_id}/alarm"

    def gateway_active_alarms(self) -> str:
        return f"{self.prefix}/gateway/{self.gateway_id}/active-alarms"

    def gateway_dropped(self) -> str:
        return f"{self.prefix}/gateway/{self.gateway_id}/dropped"

    def device_status(self, device_id: str) -> str:
        return f"{self.prefix}/gateway/{self.gateway_id}/device/{device_id}/status"

    def command(self) -> str:
        return f"{self.prefix}/gateway/{self.gateway_id}/cmd"

    def command_result(self) -> str:
        return f"{self.prefix}/gateway/{self.gateway_id}/cmd/result"

    def audit(self) -> str:
        return f"{self.prefix}/gateway/{self.gateway_id}/audit"

    def lighting(self, circuit: str) -> str:
        return f"{self.prefix}/gateway/{self.gateway_id}/lighting/{circuit}"
