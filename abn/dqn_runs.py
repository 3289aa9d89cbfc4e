"""The work behind the DQN figures (issue 15): train an agent, evaluate it and the
baselines on held-out schedules, and stream every row as it is produced.

A `Task` is one training run (one learning rate, one repetition seed). It reports rows
through `emit(csv_name, rows)` once per episode; `run_tasks` runs tasks in this process
(workers=1) or in spawned worker processes, and in both cases the parent alone appends
the rows to the run folder's CSVs and flushes them, so a killed run keeps everything
up to its last episode.

Seeds. Repetition seed r seeds the agent (weights, exploration, replay sampling) and
names its schedules: training episode e (from 0) draws schedule seed
TRAIN_BASE + r * 100_000 + e; held-out evaluation schedule j draws EVAL_BASE + r * 1_000
+ j. The two ranges never meet (checked), so no evaluation schedule was trained on; every
method of a repetition meets the same held-out schedules (paired comparisons).
"""

from __future__ import annotations

import csv
import multiprocessing
import queue as queue_mod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from abn.allocators import AverageAllocator
from abn.dqn_baselines import EdfAdmitAllocator, EdfAllocator, SrptAllocator
from abn.dqn_env import BandwidthEnv, DqnEnvSettings, play

TRAIN_BASE = 10_000_000
EVAL_BASE = 90_000_000
MAX_REPETITION_SEED = 799
BASELINES = ("average", "edf", "edf_admit", "srpt", "cubic", "bbr")

Emit = Callable[[str, list[dict[str, Any]]], None]


def _check_seed(r: int) -> None:
    if not 0 <= r <= MAX_REPETITION_SEED:
        raise ValueError(f"repetition seed {r} outside 0..{MAX_REPETITION_SEED}: train and "
                         "held-out schedule seeds would overlap")


def train_schedule_seeds(r: int, episodes: int) -> list[int]:
    _check_seed(r)
    if episodes > 100_000:
        raise ValueError("at most 100000 training episodes per repetition")
    return [TRAIN_BASE + r * 100_000 + e for e in range(episodes)]


def eval_schedule_seeds(r: int, n: int) -> list[int]:
    _check_seed(r)
    if n > 1_000:
        raise ValueError("at most 1000 held-out schedules per repetition")
    return [EVAL_BASE + r * 1_000 + j for j in range(n)]


def evaluate(env: BandwidthEnv, method: str, schedule_seed: int, *, allocator: Any = None
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One held-out episode of a baseline by name (or of the allocator given): its
    totals and its reward per stage (cumulative at each stage's end)."""
    from abn.tcp_models import BbrLike, CubicLike

    s = env.settings
    kw: dict[str, Any]
    if allocator is not None:
        kw = {"allocator": allocator}
    elif method in ("cubic", "bbr"):
        kw = {"senders": CubicLike(s.rtt_s, schedule_seed) if method == "cubic"
              else BbrLike(s.rtt_s, s.capacity_bps, schedule_seed)}
    else:
        kw = {"allocator": {"average": AverageAllocator, "edf": EdfAllocator,
                            "edf_admit": EdfAdmitAllocator, "srpt": SrptAllocator}[method]()}
    stages: dict[int, dict[str, Any]] = {}

    def on_slot(info: dict[str, Any]) -> None:
        st = stages.setdefault(info["stage"], {"stage": info["stage"], "reward": 0.0,
                                               "slim_per_round": info["slim_per_round"],
                                               "slim_finished": 0, "slim_missed": 0})
        st["reward"] += info["reward"]
        st["slim_finished"] += info["slim_finished"]
        st["slim_missed"] += info["slim_missed"]

    t = play(env, schedule_seed, on_slot=on_slot, **kw)
    total = {"reward": t.reward, "slim_finished": t.slim_finished, "slim_missed": t.slim_missed,
             "fat_finished": t.fat_finished, "fat_missed": t.fat_missed,
             "unfinished_at_end": t.unfinished_at_end,
             "utilisation": t.served_bytes / (s.slot_bytes * s.episode_slots),
             "dropped_mb": t.dropped_bytes / 1e6}
    cum = 0.0
    rows = []
    for k in sorted(stages):
        cum += stages[k]["reward"]
        rows.append({**stages[k], "cumulative_reward": cum})
    return total, rows


@dataclass(frozen=True)
class Task:
    """One training run and, optionally, its held-out evaluation."""

    prefix: str
    """CSV names start with it (fig9, fig10, fig11)."""
    seed: int
    learning_rate: float
    episodes: int
    env: DqnEnvSettings
    dqn: Any
    """abn.dqn.DQNSettings (typed as Any so this module imports without TensorFlow)."""
    policy_dir: str
    eval_episodes: int = 0
    baselines: tuple[str, ...] = ()
    tf_threads: int = 1

    @property
    def label(self) -> str:
        return f"lr {self.learning_rate:g} seed {self.seed}"


def run_task(task: Task, emit: Emit) -> None:
    """Train (rows per episode into <prefix>_train.csv), save the policy, then evaluate
    the saved policy through the numpy `dqn` allocator, and the baselines, on held-out
    schedules (<prefix>_eval.csv, <prefix>_stages.csv)."""
    from abn.dqn import make_agent, train
    from abn.dqn_policy import DQNAllocator

    env = BandwidthEnv(task.env)
    settings = task.dqn.model_copy(update={"learning_rate": task.learning_rate})
    agent = make_agent(env, settings, task.seed, task.tf_threads)
    seeds = train_schedule_seeds(task.seed, task.episodes)

    def on_episode(log: Any) -> None:
        losses = log.losses
        emit(f"{task.prefix}_train.csv", [{
            "lr": task.learning_rate, "seed": task.seed, "episode": log.episode,
            "split": "train", "schedule_seed": log.schedule_seed, "reward": log.reward,
            "epsilon": round(log.epsilon, 4),
            "loss_mean": sum(losses) / len(losses) if losses else "",
            "first_train_step": log.first_train_step if losses else "",
            "last_train_step": log.first_train_step + len(losses) - 1 if losses else "",
            "slim_finished": log.slim_finished, "slim_missed": log.slim_missed,
            "fat_finished": log.fat_finished, "fat_missed": log.fat_missed,
            "actions": "|".join(map(str, log.actions)), "seconds": round(log.seconds, 3)}])

    train(env, agent, seeds, on_episode)
    agent.save(Path(task.policy_dir), {"learning_rate": task.learning_rate,
                                       "train_schedule_seeds": [seeds[0], seeds[-1]]})
    if not task.eval_episodes:
        return
    policy = DQNAllocator(task.policy_dir)
    for j, sched in enumerate(eval_schedule_seeds(task.seed, task.eval_episodes)):
        for method in ("dqn", *task.baselines):
            total, stages = evaluate(env, method, sched,
                                     allocator=policy if method == "dqn" else None)
            base = {"lr": task.learning_rate, "seed": task.seed, "method": method,
                    "split": "heldout", "schedule_seed": sched}
            emit(f"{task.prefix}_eval.csv", [{**base, "eval_episode": j + 1, **total}])
            emit(f"{task.prefix}_stages.csv", [{**base, **row} for row in stages])


class CsvSink:
    """Appends rows to CSVs in one folder; the header comes from a file's first row,
    and every write is flushed."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._open: dict[str, tuple[IO[str], csv.DictWriter[str]]] = {}

    def write(self, name: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if name not in self._open:
            path = self.folder / name
            new = not path.exists() or path.stat().st_size == 0
            fh: IO[str] = path.open("a", newline="")
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            if new:
                writer.writeheader()
            self._open[name] = (fh, writer)
        fh, writer = self._open[name]
        writer.writerows(rows)
        fh.flush()

    def close(self) -> None:
        for fh, _ in self._open.values():
            fh.close()
        self._open.clear()


def _worker(tasks: Any, q: Any) -> None:
    """A spawned process: run tasks from `tasks` until None (importing TensorFlow once),
    saying how each ended."""
    import traceback

    def emit(name: str, rows: list[dict[str, Any]]) -> None:
        q.put((name, rows))

    while (task := tasks.get()) is not None:
        try:
            run_task(task, emit)
        except BaseException:
            q.put((_FAILED, [{"task": task.label, "traceback": traceback.format_exc()}]))
            raise
        q.put((_DONE, [{"task": task.label}]))


_DONE, _FAILED = "__done__", "__failed__"


def run_tasks(tasks: Sequence[Task], sink: CsvSink, workers: int,
              progress: Callable[[float, str], None]) -> None:
    """Run the tasks, `workers` at a time in spawned processes (each imports TensorFlow
    itself, limited to task.tf_threads threads) or here when workers == 1; progress is
    counted in training episodes. A failing task stops the others (their processes
    are terminated) and raises with its traceback."""
    total = max(sum(t.episodes for t in tasks), 1)
    done = 0

    def take(name: str, rows: list[dict[str, Any]]) -> None:
        nonlocal done
        sink.write(name, rows)
        if name.endswith("_train.csv"):
            done += len(rows)
            r = rows[-1]
            progress(done / total, f"lr {r['lr']:g} seed {r['seed']} episode {r['episode']}: "
                     f"reward {r['reward']:.0f}")

    if workers <= 1:
        for task in tasks:
            run_task(task, take)
        return
    labels = [t.label for t in tasks]
    if len(set(labels)) != len(labels):
        raise ValueError(f"tasks must differ in learning rate or seed: {labels}")
    ctx = multiprocessing.get_context("spawn")
    q, todo = ctx.Queue(), ctx.Queue()
    for task in tasks:
        todo.put(task)
    procs = [ctx.Process(target=_worker, args=(todo, q), daemon=True)
             for _ in range(min(workers, len(tasks)))]
    for proc in procs:
        todo.put(None)
        proc.start()
    finished = 0
    try:
        while finished < len(tasks):
            try:
                name, rows = q.get(timeout=1.0)
            except queue_mod.Empty:
                dead = [p for p in procs if not p.is_alive() and p.exitcode != 0]
                if dead:
                    raise RuntimeError(f"a training worker died (exit code {dead[0].exitcode})"
                                       " without a report") from None
                continue
            if name == _FAILED:
                raise RuntimeError(f"training task {rows[0]['task']} failed:\n"
                                   f"{rows[0]['traceback']}")
            if name == _DONE:
                finished += 1
            else:
                take(name, rows)
        for proc in procs:
            proc.join(timeout=60)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(timeout=10)
