"""Kafka settings: flags > RADFLOW_KAFKA_* > params.yaml kafka: > defaults; checked values; client options."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from radflow.errors import ConfigError
from radflow.kafka import KafkaSettings


def test_precedence_flags_environment_params_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = "kafka:\n  group_id: from-params\n  images_topic: ws.images\n  max_in_flight: 7\n"
    (tmp_path / "params.yaml").write_text(params)
    monkeypatch.setenv("RADFLOW_KAFKA_IMAGES_TOPIC", "env.images")
    settings = KafkaSettings(workspace=tmp_path, max_in_flight=3)
    assert settings.max_in_flight == 3  # flag
    assert settings.images_topic == "env.images"  # environment over params.yaml
    assert settings.group_id == "from-params"  # params.yaml over the default
    assert settings.predictions_topic == "radflow.predictions"  # default
    assert KafkaSettings().group_id == "radflow-worker"  # no workspace: no params.yaml is read


def test_bad_values_are_refused_with_the_value() -> None:
    with pytest.raises(ValidationError, match="not host:port"):
        KafkaSettings(bootstrap="kafka-1")
    with pytest.raises(ValidationError, match=r"urgent threshold of 'Edema' is 1\.5"):
        KafkaSettings(urgent={"Edema": 1.5})
    with pytest.raises(ConfigError, match="RADFLOW_KAFKA_SASL_PASSWORD"):
        KafkaSettings(security_protocol="SASL_SSL").client_options()


def test_client_options_carry_servers_and_sasl() -> None:
    settings = KafkaSettings(
        bootstrap="kafka://a:9092, tcp://b:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="radflow",
        sasl_password="pw",
    )
    options = settings.client_options()
    assert options["bootstrap_servers"] == ["a:9092", "b:9093"]
    assert options["sasl_mechanism"] == "SCRAM-SHA-512" and options["sasl_plain_password"] == "pw"
    assert options["ssl_context"] is not None
