"""``radflow worker``: a Kafka consumer group member that scores the images topic through the inference core."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from radflow.cli._app import app, console, run_command
from radflow.errors import ConfigError

if TYPE_CHECKING:
    from radflow.kafka import KafkaSettings, Worker

__all__ = ["kafka_settings", "worker_command"]


def kafka_settings(workspace: Path | None, **flags: Any) -> KafkaSettings:
    """Kafka settings from the flags given (``None``: environment, params.yaml ``kafka:``, defaults decide)."""
    from pydantic import ValidationError

    from radflow.kafka import KafkaSettings

    given = {"workspace": workspace, **flags}
    try:
        return KafkaSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"kafka {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


@app.command("worker")
def worker_command(
    workspace: Annotated[
        Path | None, typer.Option("--workspace", "-w", help="Workspace: score with its registry's champion.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Model: ONNX file, run id or models:/NAME@ALIAS.")
    ] = None,
    challenger: Annotated[str | None, typer.Option("--challenger", help="Challenger model URI (A/B, shadow).")] = None,
    model_name: Annotated[
        str | None, typer.Option("--model-name", help="Registered model name (default: registry.name, chest-xray).")
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI.")] = None,
    store_url: Annotated[str | None, typer.Option("--store-url", help="SQLAlchemy URL of the prediction log.")] = None,
    bootstrap: Annotated[
        str | None, typer.Option("--bootstrap", help="Kafka bootstrap servers host:port[,...] (default localhost:9092)")
    ] = None,
    group_id: Annotated[str | None, typer.Option("--group-id", help="Consumer group (default radflow-worker).")] = None,
    max_in_flight: Annotated[
        int | None, typer.Option("--max-in-flight", help="Messages scored at once; at this many, partitions pause.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Most messages taken per poll.")] = None,
    create_topics: Annotated[
        int | None,
        typer.Option("--create-topics", metavar="PARTITIONS", help="Create missing topics with this many partitions."),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Serve Prometheus /metrics on this HTTP port.")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="Log level (debug, info, warning).")] = "info",
) -> None:
    """Consume the images topic as one member of a consumer group; score through the same core as `radflow serve`.

    Answers go to the predictions topic (and the urgent topic past a label's `kafka.urgent` threshold),
    unscorable messages to the dead-letter topic with the reason. At least once, one prediction row per
    message. Runs until Ctrl-C or SIGTERM, which finishes the messages in flight and commits first.
    Settings: these flags > RADFLOW_KAFKA_* / RADFLOW_* environment > the workspace's params.yaml > defaults.
    """

    def body() -> None:
        from radflow.cli.serve import serve_settings
        from radflow.kafka.server import run_worker

        serve = serve_settings(
            workspace,
            model=model,
            challenger=challenger,
            model_name=model_name,
            tracking_uri=tracking_uri,
            store_url=store_url,
        )
        kafka = kafka_settings(
            workspace, bootstrap=bootstrap, group_id=group_id, max_in_flight=max_in_flight, batch_size=batch_size
        )

        def ready(worker: Worker) -> None:
            console.print(
                f"worker in group {kafka.group_id} on {kafka.bootstrap}: {kafka.images_topic} -> "
                f"{kafka.predictions_topic} (urgent {kafka.urgent_topic}, dead letters {kafka.dead_letter_topic}), "
                f"scoring with {serve.resolved_model()}, at most {kafka.max_in_flight} in flight "
                f"(store {serve.resolved_store_url()})",
                highlight=False,
            )

        run_worker(
            kafka,
            serve,
            create_topics=create_topics,
            metrics_port=metrics_port,
            on_ready=ready,
            log_level=log_level,
        )

    run_command(body)
