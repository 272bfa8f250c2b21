"""Process-wide plumbing every role shares: settings, retry and circuit breakers, tracing, logs,
ports and waiting. Imports only ``evalstream.wire``."""
