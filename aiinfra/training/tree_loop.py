"""The per-worker loop of the tree families on Ray Train's XGBoostTrainer and LightGBMTrainer.

Data-parallel boosting: each worker holds its shard of "train" (Ray Data splits it), the libraries' collectives
(XGBoost's rabit tracker, LightGBM's socket network, both set up by Ray Train) merge the histograms, so every
worker grows the same trees. "val" is given whole to every worker (not split): each computes the same validation
loss on the same rows with the same trees, so every rank takes the same early-stopping decision at the same
round without a collective of our own.

Every ``checkpoint_every`` rounds (and at the end) the loop reports to Ray Train (Tune's schedulers see these
reports) with a checkpoint from rank 0: the booster in the library's own format and ``tree_state.json`` (rounds
done, the best round, the per-round history). After a worker failure Ray Train restarts the group and the loop
goes on from the last checkpoint's trees, not from round 0. Reports are spaced because each
``ray.train.report`` waits for the controller's poll (see ``ray_train.fit``).
"""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from aiinfra.training.checkpoint_ledger import CheckpointLedger, CheckpointRecords
from aiinfra.training.config import Task, TrainerSettings
from aiinfra.training.runtimes import WEIGHTS_FILE, tree_model_from_bytes
from aiinfra.training.trees import library_params, loss_of, tree_params

__all__ = ["STATE", "TreeLoopConfig", "TreeState", "best_model_bytes", "load_tree_checkpoint", "save_tree_checkpoint",
           "tree_loop"]

STATE = "tree_state.json"


class TreeLoopConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Task
    family: str
    params: dict[str, Any] = Field(default_factory=dict)
    num_classes: int = Field(ge=0)
    has_val: bool
    trainer: TrainerSettings
    # Where each checkpoint's digest is recorded and checked (checkpoint_ledger.py); None: not recorded.
    checkpoints: CheckpointRecords | None = None


@dataclass
class TreeState:
    family: str
    rounds: int = 0  # rounds done
    best_round: int = -1  # 0-based
    best_val_loss: float | None = None
    bad_rounds: int = 0
    stopped_early: bool = False
    cut_to_best: bool = True  # keep only the trees up to the best round (early stopping is on)
    history: list[dict[str, Any]] = field(default_factory=list)


def save_tree_checkpoint(directory: str | Path, raw: bytes, state: TreeState) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / WEIGHTS_FILE[state.family]).write_bytes(raw)
    (directory / STATE).write_text(json.dumps(asdict(state)))
    return directory


def load_tree_checkpoint(directory: str | Path) -> tuple[bytes, TreeState]:
    """(the booster after the last checkpointed round, the state)."""
    directory = Path(directory)
    state = TreeState(**json.loads((directory / STATE).read_text()))
    return (directory / WEIGHTS_FILE[state.family]).read_bytes(), state


def best_model_bytes(raw: bytes, state: TreeState) -> bytes:
    """The booster cut back to its best round's trees; all of them without early stopping (or a validation set)."""
    keep = state.best_round + 1 if state.cut_to_best and state.best_round >= 0 else state.rounds
    booster = tree_model_from_bytes(state.family, raw)
    if state.family == "xgboost":
        return bytes(booster[:keep].save_raw("ubj")) if keep < booster.num_boosted_rounds() else raw
    return booster.model_to_string(num_iteration=keep).encode("utf-8")


def _arrays(shard: Any) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for batch in shard.iter_batches(batch_size=65_536, batch_format="numpy"):
        xs.append(np.asarray(batch["x"], dtype=np.float32))
        ys.append(np.asarray(batch["y"]))
    if not xs:
        raise RuntimeError("this worker's data shard is empty: fewer rows than workers?")
    return np.concatenate(xs), np.concatenate(ys)


class _Rounds:
    """The bookkeeping both libraries share: after each round, the losses in, whether to stop out; every
    ``checkpoint_every`` rounds (and on the last) a report to Ray Train with rank 0's checkpoint."""

    def __init__(self, run: TreeLoopConfig, state: TreeState, rank: int, world: int,
                 ledger: CheckpointLedger | None = None) -> None:
        import ray.train

        self._train = ray.train
        self.run, self.state, self.rank, self.world, self.ledger = run, state, rank, world, ledger
        self.params = tree_params(run.family, run.params)
        self.start = state.rounds
        self._t0 = self._last = time.perf_counter()

    def after_round(self, train_loss: float, val_loss: float | None, model_bytes: Any) -> bool:
        s, p = self.state, self.params
        r = s.rounds
        loss = loss_of(self.run.family, self.run.task, val_loss if val_loss is not None else train_loss)
        if s.best_val_loss is None or loss < s.best_val_loss - self.run.trainer.min_delta:
            s.best_val_loss, s.best_round, s.bad_rounds = loss, r, 0
        else:
            s.bad_rounds += 1
        s.rounds = r + 1
        # Without a validation set there is nothing to stop on that every rank computes alike.
        stop = self.run.has_val and p.early_stopping_rounds is not None and s.bad_rounds >= p.early_stopping_rounds
        s.stopped_early = stop
        now = time.perf_counter()
        s.history.append({"epoch": r, "train_loss": loss_of(self.run.family, self.run.task, train_loss),
                          "val_loss": loss, "best_val_loss": s.best_val_loss, "start_epoch": self.start,
                          "world_size": self.world, "epoch_time_s": now - self._last})
        self._last = now
        last = stop or s.rounds >= p.num_boost_round
        if last or s.rounds % p.checkpoint_every == 0:
            self._report(model_bytes, last)
        return stop

    def _report(self, model_bytes: Any, last: bool) -> None:
        s = self.state
        metrics = {**s.history[-1], "best_epoch": s.best_round, "rounds": s.rounds, "stopped_early": int(s.stopped_early),
                   "mean_round_s": (time.perf_counter() - self._t0) / max(1, s.rounds - self.start)}
        if not s.cut_to_best:
            # Early stopping off: the model keeps every round, so its loss is the last round's, not the best one's
            # (Tune and the run's summary compare the models that are kept).
            metrics.update(best_val_loss=s.history[-1]["val_loss"], best_epoch=s.rounds - 1)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if self.rank == 0:
                save_tree_checkpoint(tmp, model_bytes(), s)
                if self.ledger is not None:  # recorded before it is reported: never visible unrecorded
                    self.ledger.record(tmp)
                checkpoint = self._train.Checkpoint.from_directory(tmp)
            self._train.report(metrics, checkpoint=checkpoint)


def tree_loop(config: dict[str, Any]) -> None:
    """One worker's run; ``config`` is a ``TreeLoopConfig`` as a dict (what Ray Train passes on)."""
    # Ray here, not at the top: the CLI imports pipelines.train (-> ray_train -> this module) before
    # connect() sets RAY_AUTH_MODE, which Ray reads once, when imported.
    import ray.train

    run = TreeLoopConfig.model_validate(config)
    t = run.trainer
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    params = tree_params(run.family, run.params)
    state = TreeState(family=run.family, cut_to_best=run.has_val and params.early_stopping_rounds is not None)
    raw = None
    ledger = CheckpointLedger.of(run.checkpoints)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restart after a failure
        with checkpoint.as_directory() as d, (ledger.verified(d, where=checkpoint.path) if ledger is not None
                                              else nullcontext(d)) as checked:
            raw, state = load_tree_checkpoint(checked)
    remaining = params.num_boost_round - state.rounds
    if remaining <= 0 or state.stopped_early:
        return
    x, y = _arrays(ray.train.get_dataset_shard("train"))
    val = _arrays(ray.train.get_dataset_shard("val")) if run.has_val else None
    lib = library_params(run.family, params, task=run.task, num_classes=run.num_classes, seed=t.seed,
                         threads=max(1, int(round(t.cpus_per_worker))), use_gpu=t.use_gpu)
    rounds = _Rounds(run, state, rank, world, ledger)
    if run.family == "xgboost":
        _xgboost(lib, x, y, val, raw, remaining, rounds)
    else:
        _lightgbm(lib, x, y, val, raw, remaining, rounds)


def _xgboost(lib: dict[str, Any], x: np.ndarray, y: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None,
             raw: bytes | None, remaining: int, rounds: _Rounds) -> None:
    import xgboost

    if lib.get("device") == "cuda" and not xgboost.build_info().get("USE_CUDA"):
        raise RuntimeError("trainer.use_gpu is set but this XGBoost build has no CUDA support: install the `xgboost` "
                           "wheel (not xgboost-cpu) in the GPU workers' image")
    dtrain = xgboost.DMatrix(x, label=y)
    evals = [(dtrain, "train")]
    if val is not None:
        evals.append((xgboost.DMatrix(val[0], label=val[1]), "val"))
    metric = lib["eval_metric"]

    class Report(xgboost.callback.TrainingCallback):
        def after_iteration(self, model: Any, epoch: int, evals_log: dict[str, Any]) -> bool:
            train_loss = float(evals_log["train"][metric][-1])
            val_loss = float(evals_log["val"][metric][-1]) if "val" in evals_log else None
            return rounds.after_round(train_loss, val_loss, lambda: bytes(model.save_raw("ubj")))

    start = tree_model_from_bytes("xgboost", raw) if raw is not None else None
    xgboost.train(lib, dtrain, num_boost_round=remaining, evals=evals, xgb_model=start, verbose_eval=False,
                  callbacks=[Report()])


def _lightgbm(lib: dict[str, Any], x: np.ndarray, y: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None,
              raw: bytes | None, remaining: int, rounds: _Rounds) -> None:
    import lightgbm
    import ray.train.lightgbm

    network = ray.train.lightgbm.get_network_params()
    if network.get("num_machines", 1) > 1:
        # Each worker's rows are its own partition; trees are grown data-parallel over the network.
        lib = {**lib, **network, "tree_learner": "data", "pre_partition": True}
    train_set = lightgbm.Dataset(x, label=y, params=lib, free_raw_data=False)
    sets, names = [train_set], ["train"]
    if val is not None:
        sets.append(lightgbm.Dataset(val[0], label=val[1], reference=train_set, free_raw_data=False))
        names.append("val")

    def report(env: Any) -> None:
        losses = {name: value for name, _, value, _ in env.evaluation_result_list}
        stop = rounds.after_round(float(losses["train"]), float(losses["val"]) if "val" in losses else None,
                                  lambda: env.model.model_to_string().encode("utf-8"))
        if stop:
            raise lightgbm.callback.EarlyStopException(rounds.state.best_round, env.evaluation_result_list)

    start = tree_model_from_bytes("lightgbm", raw) if raw is not None else None
    lightgbm.train(lib, train_set, num_boost_round=remaining, valid_sets=sets, valid_names=names, init_model=start,
                   callbacks=[report])
