"""The client actor: a thin Ray wrapper around :class:`~fedray.client.trainer.Trainer`.

One actor loads the frozen base model once and then trains many virtual clients in turn. It
holds no client state between rounds: what must survive comes in with the job and goes back
with the update, keyed by client id, so any actor can train any client. Within one round it
keeps each of its clients' *session* (what a multi-phase privacy mechanism's client keeps
between round trips, such as its secret keys), which never leaves the actor.
"""

from __future__ import annotations

import ctypes
import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedray.client.attack import Attack
from fedray.client.faults import FaultInjector
from fedray.client.process import model_size, node_id, pick_device
from fedray.client.speed import Work, delay_s, speed_factors
from fedray.core.config import FedrayConfig
from fedray.core.statemath import nbytes, subtract
from fedray.core.types import State, TrainJob, Update
from fedray.data.base import EncodedData
from fedray.models import groups
from fedray.pipeline import Pipeline
from fedray.tasks.base import add_sums, shard_rows

if TYPE_CHECKING:
    from fedray.models.shared import BaseTensors


def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to trim
        return None


_LIBC = _libc()


class HeapTrimmer:
    """Returns the heap memory freed by the last jobs (activations, logits) to the OS, spending
    at most `share` of the actor's time on it.

    glibc keeps freed chunks (its mmap threshold grows with the largest freed block, up to
    32 MB), so after a training step of a large model an idle actor would hold ~150 MB of
    freed activations (1.3 GB LLaMA-style model, batch 2 x 32 tokens; experiments/large).
    `malloc_trim(0)` gives them back, but it walks the whole heap: 12-34 ms per call with
    MiniLM loaded. After every one of W2's 50 one-step jobs a round, fedray's round took 1.135x
    the plain loop's; throttled like this, 1.080x (one side-by-side run each). A call is made
    only once the time since the last one is at least 1 / `share` times what that one took:
    after every job of a large model, every few seconds for small jobs.
    """

    def __init__(self, share: float = 0.01) -> None:
        self.share = share
        self.next_at = 0.0

    def __call__(self) -> None:
        now = time.perf_counter()
        if _LIBC is None or now < self.next_at:
            return
        _LIBC.malloc_trim(0)
        self.next_at = now + (time.perf_counter() - now) / self.share


def _get(ref: Any) -> Any:
    import ray

    return ray.get(ref)


def _shared_base(ref: Any) -> dict[str, BaseTensors]:
    """The node's shared base (zero-copy views), or a one-line ModelError saying how to fix."""
    from fedray.core.errors import ModelError

    try:
        return _get(ref)
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        raise ModelError(
            f"shared base: the first actor could not export it to Ray's object store "
            f"({lines[-1][:200] if lines else type(exc).__name__}); raise "
            "cluster.object_store_memory above the base's size or set model.shared_base=false"
        ) from None


@dataclass(frozen=True)
class ActorSpec:
    """What a client actor needs, already typed: the run spec, the data's label count, the
    algorithm's client rule (a `rule` registry node), the number of clients of the run, and
    the global id of the first client in the actor's data (a silo's share starts later)."""

    run: FedrayConfig
    num_labels: int | None
    rule: dict[str, Any]
    population: int
    first_client: int = 0
    base: list[Any] | None = None  # [ObjectRef of {architecture: BaseTensors}] (shared base)


class ClientWorker:
    """Trains virtual clients on one CPU/GPU slot. Wrapped by ``ray.remote`` in the driver."""

    def __init__(self, spec: ActorSpec, data: EncodedData) -> None:
        from fedray.client.trainer import Recipe, Trainer
        from fedray.core import registry

        run = spec.run
        c = run.client
        threads = c.torch_threads or max(1, math.ceil(c.num_cpus))
        task = registry.build("task", {"name": run.data.task})
        bases = _shared_base(spec.base[0]) if spec.base else {}  # zero-copy views
        self.bases: dict[str, BaseTensors] = bases
        device = pick_device(c.device, c.num_gpus)
        # One model per architecture (one unless model.groups differ in num_layers).
        self.trainers = {
            arch: Trainer(cfg, task, spec.num_labels, run.seed, device, threads, bases.get(arch))
            for arch, cfg in groups.architectures(run.model).items()
        }
        self.trainer = next(iter(self.trainers.values()))  # the global model's architecture
        resolved = groups.resolve(run.model)
        self.arch_of = [
            resolved[g].arch for g in groups.assign(resolved, spec.population, run.seed)
        ]
        self.eval_batch_size = c.eval_batch_size
        self.run = run
        self._public: dict[str, np.ndarray] = {}  # FedDF's public set, built on first use
        self._public_size = 0
        self.pipeline = Pipeline.from_spec(run)
        self.data = data
        self.rule = registry.build("rule", spec.rule, trainer=self.trainer, seed=run.seed)
        # a selector that samples by size asks for equal aggregation weights (selection.weights)
        self.equal_weights = getattr(run.selection, "weights", "samples") == "equal"
        self.recipe = Recipe.from_config(c)
        self.first_client = spec.first_client
        self.speed = speed_factors(run.speed, spec.population, run.seed)
        algorithm = registry.entry("algorithm", run.algorithm.name).factory
        self.work = Work.of(run.speed, run.seed, run.algorithm.name, algorithm.keeps_partial_work)
        self.faults = FaultInjector(run.faults)
        self.attack = Attack(run.attack, spec.population, run.seed)
        self.node = node_id()
        self.sessions: dict[int, dict[str, Any]] = {}  # client id -> session, this round only
        self.session_round = -1
        self.trim_heap = HeapTrimmer()

    def ready(self) -> dict[str, Any]:
        """Where this actor runs (pid, device, the GPUs Ray pinned it to) and the size of its
        model: `model_params` (the whole model, adapters excluded), `model_fp32_bytes` (as
        float32: what a full fine-tuning update would send), `trainable_params`; the bytes of
        its models' frozen parameters (`base_bytes`) and of those that lie in the node's shared
        copy of the base (`base_shared_bytes`, checked tensor by tensor)."""
        import ray

        from fedray.models.shared import frozen_bytes

        params, trainable = model_size(self.trainer.model)
        models = [(t.model, self.bases.get(a)) for a, t in self.trainers.items()]
        frozen, in_shared = frozen_bytes(models)
        return {
            "model_params": params,
            "model_fp32_bytes": 4 * params,
            "trainable_params": trainable,
            "base_bytes": frozen,
            "base_shared_bytes": in_shared,
            "pid": os.getpid(),
            "node": self.node,
            "device": str(self.trainer.device),
            "gpu_ids": [
                str(g) for g in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
            ],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            # shared: this actor maps the node's one copy; on a GPU that copy is in host
            # memory and the actor keeps its own device copy (see README, Large models)
            "base": ("shared" if self.bases else "own")
            + ("" if self.trainer.device.type == "cpu" else f"+{self.trainer.device.type}-copy"),
        }

    def initial_state(self) -> State:
        """The trainable state right after loading (the round-0 global state): with several
        architectures, every architecture's state under its key prefix."""
        if len(self.trainers) == 1:
            return self.trainer.get_state()
        return {f"{a}/{k}": v for a, t in self.trainers.items() for k, v in t.get_state().items()}

    def export_base(self) -> dict[str, BaseTensors]:
        """Each architecture's frozen base (to put in the object store once) and private part;
        frozen arrays equal across architectures are one array (stored once)."""
        out: dict[str, BaseTensors] = {}
        seen: dict[str, np.ndarray] = {}
        for arch, trainer in self.trainers.items():
            base = trainer.export_base()
            for name, array in base.frozen.items():
                same = seen.get(name)
                if same is not None and same.dtype == array.dtype and np.array_equal(same, array):
                    base.frozen[name] = same
                else:
                    seen.setdefault(name, array)
            out[arch] = base
        return out

    def adopt_base(self, ref: list[Any]) -> int:
        """Swap this actor's own frozen tensors for the shared ones it exported; returns the
        shared bytes."""
        bases = _get(ref[0])
        for arch, trainer in self.trainers.items():
            trainer.adopt_base(bases[arch])
        self.bases = bases
        return sum({id(a): a.nbytes for b in bases.values() for a in b.frozen.values()}.values())

    def _arch_state(self, state: State, arch: str) -> State:
        """The part of a (union) state that architecture `arch` holds, unprefixed."""
        if len(self.trainers) == 1:
            return state
        prefix = f"{arch}/"
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    def _session(self, round: int, client_id: int) -> dict[str, Any]:
        if round != self.session_round:  # a new round: the last one's sessions are over
            self.sessions, self.session_round = {}, round
        return self.sessions.setdefault(client_id, {})

    def phase(self, phase: str, round: int, messages: dict[int, Any]) -> dict[int, Any]:
        """One round trip of the privacy mechanism for this actor's clients of the round.

        A client whose handler raises is left out of the reply: it dropped out.
        """
        replies: dict[int, Any] = {}
        for cid, message in messages.items():
            try:
                replies[cid] = self.pipeline.mechanism.client_phase(
                    phase,
                    client_id=cid,
                    round=round,
                    message=message,
                    session=self._session(round, cid),
                )
            except Exception:
                self.sessions.pop(cid, None)
        return replies

    def train(
        self, job: TrainJob, payload: Any, extra: State | None = None, round_message: Any = None
    ) -> Update:
        """Local training of one virtual client by the algorithm's client rule, then the
        pipeline's client transforms.

        `payload` is the broadcast (the downlink codec's encoding of the shared global state),
        `extra` what the strategy broadcast beside it (SCAFFOLD's c); the rule's own extra
        state goes back in the update and counts towards `nbytes_up`.
        """
        from fedray.client.rows import count_lookups  # torch: here, not in the driver's import
        from fedray.client.rules import LocalJob

        self.faults.inject(job.round, job.client_id, job.attempt)
        # simulated stragglers do less (or drop out)
        n = self.data.num_samples(job.client_id - self.first_client)
        recipe = self.work.recipe(self.recipe, job.round, job.client_id, job.cohort, n)
        global_state = self.pipeline.decode_down(payload, job.spec)
        stored = dict(job.client_state)
        mechanism = self.pipeline.mechanism
        session = self._session(job.round, job.client_id)
        arch = self.arch_of[job.client_id]
        trainer = self.trainers[arch]
        local = LocalJob(
            job.client_id,
            job.seed,
            self.data.client_batch(job.client_id - self.first_client),
            self._arch_state(global_state, arch),
            stored.pop("rule", None),
            extra,
        )
        training = mechanism.client_training(
            client_id=job.client_id,
            round=job.round,
            seed=job.seed,
            state=stored.get("privacy"),
            session=session,
        )
        with (
            trainer.shaped(training),  # e.g. DP-SGD around every fit of the rule
            count_lookups(trainer.model, self.run.client.embedding_rows == "lookups") as lookups,
        ):
            result = self.rule.run(trainer, local, recipe)
        if len(self.trainers) > 1:  # other architectures' keys come back unchanged (delta 0)
            result.trained = {
                **global_state,
                **{f"{arch}/{k}": v for k, v in result.trained.items()},
            }
        trained = self.attack.apply(result.trained, global_state, job.client_id, job.round)
        delay = delay_s(float(self.speed[job.client_id]), result.metrics["compute_s"])
        result.metrics["delay_s"] = delay
        time.sleep(delay)  # simulated straggler (speed.*); 0 by default
        weight = 1 if self.equal_weights else result.num_samples  # the aggregation weight
        sent, state = self.pipeline.client(
            subtract(trained, global_state),
            spec=job.spec,
            weight=float(weight),
            client_id=job.client_id,
            round=job.round,
            seed=job.seed,
            round_message=round_message,
            client_message=job.message,
            client_state=stored,
            session=session,
        )
        privacy, figures = mechanism.client_finish(
            client_id=job.client_id, round=job.round, state=stored.get("privacy"), session=session
        )
        if privacy is None:
            state.pop("privacy", None)
        else:
            state["privacy"] = privacy
        result.metrics.update(figures)
        if result.client_state is not None:
            state["rule"] = result.client_state
        metrics = result.metrics
        if not self.pipeline.mechanism.reveals_client_metrics:  # e.g. DP: the loss stays here
            metrics = {k: metrics[k] for k in ("compute_s", "delay_s") if k in metrics}
        self.trim_heap()
        rows = None if lookups is None else lookups.sparse()
        return Update(
            client_id=job.client_id,
            num_samples=weight,
            payload=sent,
            nbytes_up=int(sent.nbytes)
            + (0 if result.extra is None else nbytes(result.extra))
            + (0 if rows is None else sum(r.nbytes + c.nbytes for r, c in rows.values())),
            metrics=metrics,
            client_state=state,
            extra=result.extra,
            node=self.node,
            row_counts=rows,
        )

    def evaluate_shard(self, global_state: State, shard: int, shards: int) -> list[dict]:
        """Per-batch sums of the global state over shard `shard` of `shards` of the test set."""
        n = len(next(iter(self.data.test.values())))
        start, stop = shard_rows(n, self.eval_batch_size, shard, shards)
        if start == stop:  # more actors than test batches
            return []
        self.trainer.set_state(self._arch_state(global_state, self.primary))
        sums = self.trainer.eval_sums(self.data.test, self.eval_batch_size, start, stop)
        self.trim_heap()
        return sums

    def probe_losses(self, client_ids: list[int], payload: Any, spec: Any) -> dict[int, float]:
        """The task's loss of the broadcast global model on each client's own training
        samples, in evaluation mode (power-of-choice's fresh losses, ``selection.loss=fresh``).
        """
        global_state = self.pipeline.decode_down(payload, spec)
        out: dict[int, float] = {}
        for cid in client_ids:
            arch = self.arch_of[cid]
            trainer = self.trainers[arch]
            trainer.set_state(self._arch_state(global_state, arch))
            batch = dict(self.data.client_batch(cid - self.first_client))
            sums = add_sums([trainer.eval_sums(batch, self.eval_batch_size)])
            out[cid] = float(trainer.task.metrics(sums)["loss"])
        self.trim_heap()
        return out

    def export(self, global_state: State) -> dict[str, bytes]:
        """The global model as files (peft adapter or full HF model), to ship to the driver."""
        return self.trainer.export_adapter(self._arch_state(global_state, self.primary))

    def distill(
        self, student: State, teachers: list[tuple[str, State]], options: Any, seed: list[int]
    ) -> tuple[State, dict[str, float]]:
        """Server-side ensemble distillation (FedDF) on this actor's models; the public set
        is built on first use."""
        from fedray.client.distill import distill, public_set

        size = int(options.public_size)
        if self._public_size != size:
            self._public, self._public_size = public_set(self.run, size), size
        out = distill(
            self.trainers, self._public, student, teachers, options, seed, self.eval_batch_size
        )
        self.trim_heap()
        return out

    @property
    def primary(self) -> str:
        """The architecture of the global model (the first group's)."""
        return next(iter(self.trainers))
