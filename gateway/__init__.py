"""municipal-gateway: field devices → shared metadata model → durable buffer → MQTT."""

__version__ = "0.1.0"
