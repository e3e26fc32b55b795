"""`fedray report`: runs read back from MLflow into a self-contained HTML report with PNG plots.

Pick the runs by a sweep's parent run (`--parent RUN_ID`: its children; the report is also
logged as the parent's artifact `report/`), or by experiment (`--experiment NAME`, repeatable),
narrowed by tags (`--tag sweep.algorithm=fedprox`). The page is `OUT/report.html`.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedray.app.console import VerbParser, fail


def main(args: list[str]) -> None:
    """`fedray report [--parent RUN_ID | --experiment NAME...] [--tag K=V...] [--out DIR]`."""
    from fedray.app.preflight import check_tracking_uri
    from fedray.app.resume import tracking_uri
    from fedray.core.errors import FedrayError
    from fedray.tracking.report import Selection, collect, write_report

    parser = VerbParser(
        prog="fedray report",
        description="Read runs back from MLflow and write a self-contained HTML report: the "
        "objective by round, by cumulative bytes and by epsilon (when logged), and the final "
        "objective by swept axes with its mean and spread over seeds.",
    )
    parser.add_argument("--parent", help="a sweep's (or tune study's) MLflow parent run id")
    parser.add_argument(
        "--experiment", action="append", default=[], help="MLflow experiment name (repeatable)"
    )
    parser.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE", help="only runs with this tag"
    )
    parser.add_argument("--metric", help="metric to report (default: each run's objective)")
    parser.add_argument("--out", default="report", help="output directory (default: ./report)")
    parser.add_argument(
        "--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)"
    )
    parser.add_argument(
        "--no-log", action="store_true", help="do not log the report to the parent run"
    )
    ns = parser.parse_args(args)
    if not ns.parent and not ns.experiment:
        parser.error("name the runs: --parent RUN_ID or --experiment NAME")
    tags = {}
    for item in ns.tag:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--tag {item}: write KEY=VALUE")
        tags[key] = value
    uri = ns.tracking_uri or tracking_uri(os.getcwd())
    try:
        check_tracking_uri(uri, key="--tracking-uri")
    except FedrayError as exc:
        fail(str(exc))
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    selection = Selection(uri, ns.experiment, ns.parent, tags, ns.metric)
    client = MlflowClient(uri)
    try:
        runs, axes = collect(client, selection)
    except MlflowException as exc:
        fail(f"--parent {ns.parent}: {str(exc).splitlines()[0]}; pass a run id from {uri}")
    except ValueError as exc:
        fail(str(exc))
    page = write_report(runs, axes, selection, Path(ns.out))
    print(f"report: {len(runs)} runs, axes {', '.join(axes) or '(none)'} -> {page}")
    if ns.parent and not ns.no_log:
        client.log_artifacts(ns.parent, str(page.parent), "report")
        print(f"report: logged to MLflow run {ns.parent} under report/")
