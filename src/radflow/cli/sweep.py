"""``radflow sweep``: a grid search over params.yaml keys on Ray Tune (:mod:`radflow.scale.sweep`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from radflow.cli._app import app, console, emit, run_command

__all__ = ["sweep_command"]


_HELP = (
    "Search params.yaml keys with Ray Tune in a workspace; register the best trial through the usual gates.\n\n"
    "Each trial trains on the workspace's split dataset (data/split, from `radflow run`) with the workspace's "
    "params.yaml plus its grid values, as a child MLflow run of one parent run named after the sweep; a trial that "
    "fails is marked FAILED and the others go on. Trials report their best val metric so far (the task kind's "
    "monitored one) after every epoch, and ASHA stops a trial that falls below the best 1/--reduction-factor at a "
    "rung (--grace-epochs x factor^k epochs): its run ends KILLED and sweep.json says stopped (--no-early-stop runs "
    "every trial to its end). The best finished trial is evaluated, exported and registered as the register stage "
    "does.\n\n"
    "Recorded in the workspace: sweeps/NAME/sweep.json (every trial's params, status, metric, child run and error; "
    "the chosen params; the registration) and dvc_command, the `radflow run -S KEY=VALUE ...` that reruns the "
    "chosen params as a DVC experiment (`dvc exp show` then lists it); --apply writes them into params.yaml.\n\n"
    "Example: radflow sweep --grid train.lr=1e-3,3e-3 --grid train.arch=small_cnn,resnet18 --ray 10.0.0.5:6379"
)


@app.command("sweep", help=_HELP)
def sweep_command(
    grid: Annotated[
        list[str],
        typer.Option(
            "--grid",
            "-G",
            metavar="KEY=V1,V2,...",
            help="A params.yaml key and the values to try; repeat for more keys (trials: every combination).",
        ),
    ],
    workspace: Annotated[
        Path | None, typer.Option(help="Workspace folder (default: the one holding the current folder).")
    ] = None,
    ray: Annotated[
        str, typer.Option("--ray", help="Ray cluster: auto (the one this machine belongs to) or the head's HOST:PORT.")
    ] = "auto",
    cpus_per_trial: Annotated[int, typer.Option(help="CPUs each trial holds (and its torch threads).")] = 1,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Sweep name (default: sweep-DATE-TIME).")] = None,
    apply: Annotated[
        bool,
        typer.Option("--apply", help="Write the chosen params into params.yaml (the next `radflow run` uses them)."),
    ] = False,
    register: Annotated[
        bool, typer.Option("--register/--no-register", help="Register the best trial through params.yaml's gates.")
    ] = True,
    early_stop: Annotated[
        bool,
        typer.Option(
            "--early-stop/--no-early-stop",
            help="Stop bad trials early with ASHA (each trial reports its best val metric every epoch).",
        ),
    ] = True,
    grace_epochs: Annotated[int, typer.Option(help="Epochs every trial runs before ASHA may stop it.")] = 1,
    reduction_factor: Annotated[
        float, typer.Option(help="ASHA keeps the best 1/FACTOR of the trials at each rung (rungs: grace x FACTOR^k).")
    ] = 2.0,
    max_concurrent: Annotated[
        int | None, typer.Option(help="Trials running at once (default: as many as the cluster's CPUs hold).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print sweep.json.")] = False,
) -> None:
    """Search params.yaml keys with Ray Tune in a workspace; register the best trial through the usual gates."""
    from radflow.config import load_params, params_yaml
    from radflow.pipeline import dvc_yaml as paths
    from radflow.pipeline.workspace import find_workspace
    from radflow.scale.cluster import check_address
    from radflow.scale.sweep import parse_grid, run_sweep, scheduler_spec, trial_configs
    from radflow.tracking import resolve_tracking_uri

    def body() -> dict[str, Any]:
        root = find_workspace(workspace)
        params = load_params(root / "params.yaml")
        parsed = parse_grid(grid)
        # keys, values and scheduler settings checked before the cluster is joined
        scheduler_spec(params, trial_configs(params, parsed), early_stop, grace_epochs, reduction_factor)
        check_address(ray)
        dataset = root / paths.SPLIT_DATASET
        sweep_name = name or _default_name()
        record = run_sweep(
            dataset,
            params,
            parsed,
            root / "sweeps" / sweep_name,
            tracking_uri=resolve_tracking_uri(workspace=root),
            address=ray,
            cpus_per_trial=cpus_per_trial,
            name=sweep_name,
            register_best=register,
            early_stop=early_stop,
            grace_epochs=grace_epochs,
            reduction_factor=reduction_factor,
            max_concurrent=max_concurrent,
        )
        if apply and record["chosen_params"]:
            (root / "params.yaml").write_text(params_yaml(params.with_overrides(record["chosen_params"])))
            record["applied"] = True
        return record

    emit(run_command(body), as_json, _render)


def _default_name() -> str:
    import time

    return time.strftime("sweep-%Y%m%d-%H%M%S")


def _status(trial: dict[str, Any]) -> str:
    if trial["error"]:
        return f"failed: {trial['error'][:80]}"
    if trial["status"] == "stopped":
        return f"stopped after epoch {trial['epochs']}"
    return str(trial["status"])


def _render(record: dict[str, Any]) -> None:
    table = Table(title=f"sweep {record['name']} · {record['monitor']} ({record['mode']})")
    for column in ("trial", *record["grid"], "status", record["monitor"], "run"):
        table.add_column(column)
    for trial in record["trials"]:
        value = "" if trial["value"] is None else f"{trial['value']:.4f}"
        table.add_row(
            str(trial["trial"]),
            *(str(trial["params"][k]) for k in record["grid"]),
            _status(trial),
            value,
            (trial["run_id"] or "")[:12],
        )
    console.print(table)
    reg = record.get("registration")
    if reg:
        verdict = "[green]passed[/]" if reg["passed"] else "[red]failed[/]: " + "; ".join(reg["failures"])
        console.print(f"registered {reg['name']} v{reg['version']} (gates {verdict})", highlight=False)
    if record["chosen_params"]:
        console.print(
            f"chosen: {record['chosen_params']} · as a DVC experiment: {record['dvc_command']}", highlight=False
        )
