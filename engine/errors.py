"""The engine's small error hierarchy."""


class EngineError(Exception):
    """Base of every error the engine raises on purpose; its message is one operator-readable line."""


class SettingsError(EngineError):
    """A setting is missing or invalid; the engine stops before doing anything."""


class ServiceUnavailable(EngineError):
    """A backing service (Dragonfly, PostgreSQL, ClickHouse) cannot be reached."""


class InvalidMonitor(EngineError):
    """A monitor row cannot be checked as written (bad URL, interval out of range, …)."""
