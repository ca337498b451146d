"""/healthz: is this gateway doing its own job, as a watchdog or a load balancer should see it?

Healthy means the parts a restart could fix are working: the gateway is running (not starting or
stopping), its event loop keeps time (the last timer ran less than LOOP_LAG_LIMIT late) and its
buffer answers (the snapshot, which asks the buffer's thread, came within the listener's time
limit; a disk that stopped answering shows here). An MQTT broker that is away, or failing
devices, do not make the gateway unhealthy: the buffer is there for a broker outage, restarting
the gateway cannot bring back a broker or a meter, and a watchdog that restarted it for them
would only lose the readings of the restart. Both are on the page and in /metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.status.snapshot import Snapshot

LOOP_LAG_LIMIT = 2.0  # seconds


@dataclass(frozen=True, slots=True)
class Health:
    healthy: bool
    failing: tuple[str, ...]  # the checks that failed, each "name: why"
    uplink_connected: bool | None  # said, not judged

    def as_json(self) -> dict[str, object]:
        return {"status": "ok" if self.healthy else "unhealthy", "failing": list(self.failing),
                "uplink": None if self.uplink_connected is None else
                ("connected" if self.uplink_connected else "disconnected")}


def judge(snapshot: Snapshot | None, why_none: str = "") -> Health:
    """`snapshot` None: it could not be made (`why_none` says why)."""
    if snapshot is None:
        return Health(False, (f"buffer: {why_none}",), None)
    failing = []
    if not snapshot.running:
        failing.append("running: the gateway is starting or stopping")
    lag = snapshot.process.loop_lag_seconds
    if lag >= LOOP_LAG_LIMIT:
        failing.append(f"event-loop: its last timer ran {lag:.1f} s late")
    return Health(not failing, tuple(failing), snapshot.uplink.connected)
