"""Settings shared by every process that talks to Kafka. Read once in ``main()``, passed down.

Each setting is an explicit argument first, then an environment variable, then the default.
Environment names are ``EVALSTREAM_KAFKA_<FIELD>`` (e.g. ``EVALSTREAM_KAFKA_BOOTSTRAP``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["KafkaSettings", "env_name"]


def env_name(cls: type[BaseSettings], field: str) -> str:
    """The environment variable that sets ``field`` of ``cls`` (``EVALSTREAM_KAFKA_BOOTSTRAP``)."""
    if field not in cls.model_fields:
        raise KeyError(f"{cls.__name__} has no field {field!r}")
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


class KafkaSettings(BaseSettings):
    """How to reach the Kafka cluster (the embedded broker or any real one)."""

    model_config = SettingsConfigDict(
        env_prefix="EVALSTREAM_KAFKA_", frozen=True, extra="ignore", use_attribute_docstrings=True
    )

    bootstrap: str = "127.0.0.1:9092"
    """Comma-separated ``host:port`` list of brokers."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""
    sasl_mechanism: str | None = None
    """PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 when SASL is used."""
    sasl_username: str | None = None
    """SASL user name."""
    sasl_password: SecretStr | None = None
    """SASL password (never logged)."""
    ssl_cafile: str | None = None
    """CA bundle for SSL."""
    client_id: str = "evalstream"
    """Client id shown in the brokers' logs and quotas."""

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments common to kafka-python producers, consumers and admin clients."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap.split(",") if s.strip()],
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
        }
        if self.sasl_mechanism:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            password = self.sasl_password
            kwargs["sasl_plain_password"] = password.get_secret_value() if password else None
        if self.ssl_cafile:
            kwargs["ssl_cafile"] = self.ssl_cafile
        return kwargs
