"""LAMControl on MQTT."""

__version__ = "0.1.0"
