"""FedAvg's global model on each client's own held-out samples: the personalized-accuracy
column of FedAvg in the personalization table.

FedPer and Ditto report ``eval_personal_accuracy``: each client's personal model on a seeded 20%
of its own samples (``fedray.client.personal.holdout_rows``), averaged over a round's clients.
FedAvg has no personal model; its counterpart is its global model on the same held-out rows,
trained without them. Ditto's global model is exactly that: FedAvg on the other 80% of every
client's samples, same seeds (Ditto's client sends the plain local update of its training rows
and trains its personal model beside it). So this runs Ditto with the digits study's settings,
logs the final global model to MLflow and scores it on every client's held-out rows.

    python experiments/noniid/local_accuracy.py [--seeds 0 1 2] [--setting "dirichlet(0.1)"]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as study_runner  # experiments/noniid/run.py: the studies and their settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--setting", default="dirichlet(0.1)")
    parser.add_argument("--out", default="experiments/noniid/out")
    parser.add_argument("--holdout", type=float, default=0.2)
    args = parser.parse_args()

    import mlflow
    from mlflow.tracking import MlflowClient

    from fedray.app.cli import compose
    from fedray.app.cluster import ray_session
    from fedray.app.run import prepare, run_experiment
    from fedray.client.personal import holdout_rows, select_rows
    from fedray.client.trainer import Trainer

    study = study_runner.STUDIES["digits"]
    out = Path(args.out).resolve()
    uri = f"sqlite:///{out}/mlflow.db"
    base = [*study.base, *study.settings[args.setting], "algorithm=ditto"]
    rows = []
    first = compose([*base, "tracking=none"])
    with ray_session(first.cluster):
        for seed in args.seeds:
            name = f"digits-local | {args.setting} | ditto global | seed {seed}"
            overrides = [
                *base,
                f"seed={seed}",
                f"tracking.uri={uri}",
                "tracking.experiment=noniid-digits-local",
                "tracking.log_model=true",
            ]
            cfg = compose(overrides)
            result = run_experiment(
                cfg,
                out / "runs" / name.replace(" ", "_").replace("|", ""),
                cwd=out,
                run_name=name,
                tags={"study": "digits-local", "seed": str(seed)},
                out=None,
            )
            spec, data, encoded = prepare(cfg)
            local = mlflow.artifacts.download_artifacts(
                run_id=result.run_id, artifact_path="model", tracking_uri=uri
            )
            model_cfg = spec.model.__class__(
                name_or_path=local, finetune="full", arch=dict(spec.model.arch)
            )
            trainer = Trainer(
                model_cfg, spec.data.task, len(data.corpus.label_names), seed, threads=2
            )
            accs = []
            for k in range(data.num_clients()):
                batch = encoded.client_batch(k)
                _, held = holdout_rows(len(batch["labels"]), args.holdout, seed, k)
                if len(held):
                    accs.append(trainer.evaluate(select_rows(batch, held))["accuracy"])
            mean = sum(accs) / len(accs)
            MlflowClient(uri).log_metric(result.run_id, "local_accuracy", mean)
            personal = result.history[-1].get("eval_personal_accuracy", float("nan"))
            rows.append((seed, result.metric, mean, personal))
            print(f"seed {seed}: global {result.metric:.4f} local {mean:.4f}", flush=True)
    print("| seed | global accuracy | global model, own 20% (all clients) | Ditto personal |")
    print("| --- | ---: | ---: | ---: |")
    for seed, glob, loc, personal in rows:
        print(f"| {seed} | {glob:.4f} | {loc:.4f} | {personal:.4f} |")


if __name__ == "__main__":
    main()
