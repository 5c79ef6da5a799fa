"""Kafka settings: the ``kafka:`` section of params.yaml under ``RADFLOW_KAFKA_*`` environment variables.

Precedence, highest first: keyword arguments (``radflow worker`` flags) > ``RADFLOW_KAFKA_<FIELD>``
environment variables > the workspace's params.yaml ``kafka:`` > defaults. Production Kafka is a
bootstrap list plus the security fields; the secrets (SASL password, TLS files) are settings of one
process, never of the workspace file.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from radflow.config import KafkaConfig, Params
from radflow.errors import ConfigError
from radflow.inference.settings import WorkspaceSettings

__all__ = ["KafkaSettings"]


class KafkaSettings(KafkaConfig, WorkspaceSettings):
    """Where the brokers are, the topics, the consumer group and how hard a worker works."""

    model_config = SettingsConfigDict(
        env_prefix="RADFLOW_KAFKA_", extra="ignore", validate_default=True, validate_assignment=False
    )

    workspace: Path | None = None
    """Workspace whose params.yaml ``kafka:`` section is read (below the environment)."""
    sasl_username: str | None = None
    """SASL user (RADFLOW_KAFKA_SASL_USERNAME)."""
    sasl_password: SecretStr | None = None
    """SASL password (RADFLOW_KAFKA_SASL_PASSWORD)."""
    ssl_cafile: Path | None = None
    """CA bundle that signed the brokers' certificates (default: the system's)."""
    ssl_certfile: Path | None = None
    """Client certificate for mutual TLS."""
    ssl_keyfile: Path | None = None
    """Key of the client certificate."""
    session_timeout_s: float = Field(default=10.0, ge=1.0, le=300.0)
    """A member silent this long (a killed worker) is dropped from the group and its partitions reassigned."""

    @classmethod
    def from_workspace(cls, params: Params) -> dict[str, Any]:
        values: dict[str, Any] = params.kafka.model_dump(exclude_unset=True)
        return values

    @field_validator("bootstrap")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        servers = [s.strip().removeprefix("kafka://").removeprefix("tcp://") for s in value.split(",") if s.strip()]
        for server in servers:
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"bootstrap server {server!r} is not host:port (e.g. kafka-1.example.org:9092)")
        if not servers:
            raise ValueError("bootstrap is empty; give host:port[,host:port...]")
        return ",".join(servers)

    @field_validator("urgent")
    @classmethod
    def _urgent(cls, value: dict[str, float]) -> dict[str, float]:
        for label, threshold in value.items():
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"urgent threshold of {label!r} is {threshold}; a probability is in [0, 1]")
        return value

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments every aiokafka client of these settings takes (servers, security)."""
        options: dict[str, Any] = {"bootstrap_servers": self.bootstrap.split(",")}
        protocol = self.security_protocol
        options["security_protocol"] = protocol
        if protocol in ("SSL", "SASL_SSL"):
            context = ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
            if self.ssl_certfile is not None:
                context.load_cert_chain(str(self.ssl_certfile), str(self.ssl_keyfile) if self.ssl_keyfile else None)
            options["ssl_context"] = context
        if protocol.startswith("SASL_"):
            if not self.sasl_username or self.sasl_password is None:
                raise ConfigError(
                    f"security_protocol {protocol} needs RADFLOW_KAFKA_SASL_USERNAME and RADFLOW_KAFKA_SASL_PASSWORD."
                )
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get_secret_value()
        return options

    def topics(self) -> list[str]:
        """Every topic radflow uses: images, predictions, urgent, dead letters."""
        return [self.images_topic, self.predictions_topic, self.urgent_topic, self.dead_letter_topic]
