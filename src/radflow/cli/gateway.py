"""``radflow gateway``: a DICOM node (C-ECHO, C-STORE SCP) that scores stable studies through the inference core."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from radflow.cli._app import app, console, run_command
from radflow.errors import ConfigError

if TYPE_CHECKING:
    from radflow.gateway import Gateway

__all__ = ["gateway_command"]


@app.command("gateway")
def gateway_command(
    workspace: Annotated[
        Path | None, typer.Option("--workspace", "-w", help="Workspace: score with its registry's champion.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Model for routed series: ONNX file, run id or models:/NAME@ALIAS.")
    ] = None,
    model_name: Annotated[
        str | None, typer.Option("--model-name", help="Registered model name (default: registry.name, chest-xray).")
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI.")] = None,
    store_url: Annotated[str | None, typer.Option("--store-url", help="SQLAlchemy URL of the prediction log.")] = None,
    ae_title: Annotated[str, typer.Option("--ae-title", help="This node's AE title.")] = "RADFLOW",
    host: Annotated[str, typer.Option("--host", help="Interface to listen on (0.0.0.0: the network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="DICOM port.")] = 11112,
    allow_ae: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-ae", metavar="AE", help="A calling AE title allowed to send (repeat; none: any may send)."
        ),
    ] = None,
    stable_after: Annotated[
        float, typer.Option("--stable-after", help="Seconds without a new instance after which a study is scored.")
    ] = 5.0,
    rules: Annotated[
        Path | None, typer.Option("--rules", help="Routing rules (YAML/JSON list); none: every image series is scored.")
    ] = None,
    max_study: Annotated[
        float,
        typer.Option("--max-study", help="Seconds after its first instance a study that never goes quiet is scored."),
    ] = 3600,
    max_pending_mb: Annotated[
        float,
        typer.Option(
            "--max-pending-mb", help="Unscored images held in memory (MiB); beyond it C-STORE answers 0xA700."
        ),
    ] = 2048,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Serve Prometheus /metrics on this HTTP port.")
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="The gateway's log level (debug, info, warning).")
    ] = "info",
    result_ae: Annotated[
        str | None, typer.Option("--result-ae", help="Send each result (DICOM SR, SEG) by C-STORE to this AE title.")
    ] = None,
    result_host: Annotated[str, typer.Option("--result-host", help="The result destination's host.")] = "127.0.0.1",
    result_port: Annotated[int | None, typer.Option("--result-port", help="The result destination's port.")] = None,
    result_stow: Annotated[
        str | None, typer.Option("--result-stow", help="Send each result by STOW-RS to this DICOMweb root.")
    ] = None,
    uid_root: Annotated[
        str | None, typer.Option("--uid-root", help="UID root of the results' new UIDs (default 2.25.).")
    ] = None,
    dead_letter: Annotated[
        Path | None,
        typer.Option("--dead-letter", help="Keep refused results here, with why (dead-letter.jsonl)."),
    ] = None,
    result_heatmaps: Annotated[
        bool,
        typer.Option(
            "--result-heatmaps",
            help="Also send each positive finding's heatmap as a Secondary Capture (not for diagnostic use).",
        ),
    ] = False,
    pull_from: Annotated[
        str | None, typer.Option("--pull-from", help="Also pull studies from this DICOMweb root (QIDO-RS, WADO-RS).")
    ] = None,
    pull_study: Annotated[
        list[str] | None,
        typer.Option("--pull-study", metavar="UID", help="A Study Instance UID to pull at start (repeat)."),
    ] = None,
    poll_every: Annotated[
        float | None, typer.Option("--poll-every", help="Seconds between asking --pull-from for new studies.")
    ] = None,
    kafka_bootstrap: Annotated[
        str | None,
        typer.Option(
            "--kafka-bootstrap",
            help="Kafka mode: publish routed images for `radflow worker`s on these brokers (host:port[,...]) "
            "instead of scoring here; their answers come back as results.",
        ),
    ] = None,
    kafka_group_id: Annotated[
        str | None,
        typer.Option(
            "--kafka-group-id", help="Kafka mode: this gateway's group on the answer topics (radflow-gateway-<AE>)."
        ),
    ] = None,
    max_awaiting_mb: Annotated[
        float,
        typer.Option("--max-awaiting-mb", help="Kafka mode: sources kept for their answers (MiB); the oldest go."),
    ] = 1024,
    answer_timeout: Annotated[
        float, typer.Option("--answer-timeout", help="Kafka mode: seconds an answer is awaited before its source goes.")
    ] = 600,
) -> None:
    """Receive studies by DICOM C-STORE and score each stable one through the same inference core as `radflow serve`.

    Runs until Ctrl-C or SIGTERM; studies already acknowledged are scored before it exits.
    With --kafka-bootstrap (Kafka mode) the images go to the images topic and `radflow worker`s score them;
    topics and security come from RADFLOW_KAFKA_* and the workspace's `kafka:` section, as for the worker.
    Settings of the model and store: these flags > RADFLOW_* environment > the workspace's params.yaml > defaults.
    """

    def body() -> None:
        from pydantic import ValidationError

        from radflow.cli.serve import serve_settings
        from radflow.cli.worker import kafka_settings
        from radflow.gateway import GatewaySettings, load_rules
        from radflow.gateway.server import run_gateway
        from radflow.pacs import ResultSettings

        serve = serve_settings(
            workspace, model=model, model_name=model_name, tracking_uri=tracking_uri, store_url=store_url
        )
        if kafka_group_id is not None and kafka_bootstrap is None:
            raise ConfigError("--kafka-group-id is for Kafka mode; give --kafka-bootstrap too.")
        kafka = kafka_settings(workspace, bootstrap=kafka_bootstrap) if kafka_bootstrap is not None else None
        try:
            results = None
            if result_ae is not None or result_port is not None or result_stow is not None:
                results = ResultSettings(
                    calling_ae=ae_title,
                    destination_ae=result_ae,
                    destination_host=result_host,
                    destination_port=result_port,
                    stow_url=result_stow,
                    uid_root=uid_root,
                    dead_letter_dir=dead_letter,
                    heatmaps=result_heatmaps,
                )
            elif uid_root is not None or dead_letter is not None or result_heatmaps:
                raise ConfigError(
                    "--uid-root, --dead-letter and --result-heatmaps need a result destination "
                    "(--result-ae or --result-stow)."
                )
            settings = GatewaySettings(
                ae_title=ae_title,
                host=host,
                port=port,
                allowed_aes=list(allow_ae or []),
                stable_after_s=stable_after,
                max_study_s=max_study,
                max_pending_mb=max_pending_mb,
                rules=load_rules(rules) if rules is not None else [],
                results=results,
                pull_url=pull_from,
                pull_studies=list(pull_study or []),
                poll_every_s=poll_every,
                kafka=kafka,
                kafka_group_id=kafka_group_id,
                max_awaiting_mb=max_awaiting_mb,
                answer_timeout_s=answer_timeout,
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{where + ': ' if where else ''}{first['msg'].removeprefix('Value error, ')}") from None

        def ready(gateway: Gateway) -> None:
            allowed = ", ".join(settings.allowed_aes) or "any calling AE (use --allow-ae)"
            scoring = (
                f"publishing to {kafka.images_topic} on {kafka.bootstrap} (answers in group {settings.answer_group})"
                if kafka is not None
                else f"scoring with {serve.resolved_model()}"
            )
            store = "" if kafka is not None else f" (store {serve.resolved_store_url()})"
            console.print(
                f"DICOM node {settings.ae_title} on {settings.host}:{gateway.port} — {scoring}, studies stable "
                f"after {settings.stable_after_s:g} s, {len(settings.rules) or 'no'} routing rules, "
                f"from {allowed}{store}"
                + (f"; results to {', '.join(results.destinations)}" if results is not None else "")
                + (f"; pulling from {settings.pull_url}" if settings.pull_url else ""),
                highlight=False,
            )

        run_gateway(settings, serve, metrics_port=metrics_port, on_ready=ready, log_level=log_level)

    run_command(body)
