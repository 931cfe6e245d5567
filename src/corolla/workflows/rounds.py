"""The synchronous round loop: configure -> send -> fold replies as they arrive -> close -> evaluate."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Union

from ..grid import Grid, send_and_receive
from ..message import EVALUATE, TRAIN, Message
from ..records import Arrays, Config, Metrics, check_metrics
from ..strategies.aggregators import MetricsMean
from ..strategies.base import RoundCtx
from ..strategies.strategy import InvalidReply, Strategy
from .context import ServerContext
from .history import Failure, History, RoundRecord

log = logging.getLogger("corolla")

#: centralized evaluation: (round, arrays) -> metrics, or (loss, metrics)
EvaluateFn = Callable[[int, Arrays], Union[Metrics, tuple[float, Metrics], None]]


class RoundFailed(RuntimeError):
    """Too few nodes replied successfully; the message lists why they failed."""


@dataclass
class Rounds:
    """Run `num_rounds` synchronous rounds of `strategy`.

    `round_timeout` bounds every wait for replies; a round with fewer than `min_replies`
    successful train replies fails the run with the nodes' errors.
    """

    strategy: Strategy
    initial_arrays: Arrays | Callable[[], Arrays]
    round_timeout: float = 600.0
    min_replies: int = 1
    evaluate_fn: EvaluateFn | None = None
    train_config: Callable[[int], Config] | None = None
    evaluate_config: Callable[[int], Config] | None = None
    evaluate_every: int = 1  # federated evaluation every k rounds (and always after the last)

    def run(self, grid: Grid, ctx: ServerContext) -> History:
        num_rounds = ctx.num_rounds  # one source: the runtime's (--rounds / run config "num-rounds")
        node_ids = grid.node_ids()
        self.strategy.validate(len(node_ids))
        cohort = self.strategy.select.cohort_size(len(node_ids))
        if self.min_replies > cohort:
            raise ValueError(
                f"min_replies={self.min_replies} exceeds the {cohort} nodes sampled per round; "
                f"lower min_replies or sample more nodes"
            )
        history = History(run_id=ctx.run_id)
        if ctx.resume_from is not None:
            start, state, records = ctx.resume_from
            history.rounds = list(records)
            log.info("resuming run %s after round %d", ctx.run_id, start)
        else:
            start = 0
            arrays = self.initial_arrays() if callable(self.initial_arrays) else self.initial_arrays
            if not isinstance(arrays, Arrays):
                raise TypeError(
                    f"initial_arrays must be Arrays (or a function returning them), got {type(arrays).__name__}"
                )
            state = self.strategy.init(arrays)
            if self.evaluate_fn is not None:
                # round 0: the starting point, for learning curves
                rec = RoundRecord(round=0, server=self._central(0, state["params"]))
                history.rounds.append(rec)
                ctx.observer.round_finished(rec, state)

        for rnd in range(start + 1, num_rounds + 1):
            t0 = time.perf_counter()
            rctx = RoundCtx(round=rnd, seed=ctx.seed, num_nodes=len(node_ids))
            rec = RoundRecord(round=rnd)
            state = self._train(grid, ctx, state, rctx, rec, num_rounds)
            if self.evaluate_fn is not None:
                rec.server.update(self._central(rnd, state["params"]))
            if rnd % self.evaluate_every == 0 or rnd == num_rounds:
                self._evaluate(grid, ctx, state, rctx, rec, num_rounds)
            rec.seconds = time.perf_counter() - t0
            history.rounds.append(rec)
            ctx.observer.round_finished(rec, state)
        history.arrays = state["params"]
        history.status = "completed"
        return history

    # -- stages ---------------------------------------------------------------------
    def _messages(
        self, kind: str, nodes: list[int], arrays: Arrays, config: Config, ctx: ServerContext, rnd: int
    ) -> list[Message]:
        deadline = time.time() + self.round_timeout
        # one Arrays object shared by every message: grids broadcast it once
        return [
            Message.create(kind, n, arrays=arrays, config=config, run_id=ctx.run_id, round=rnd, deadline=deadline)
            for n in nodes
        ]

    def _train(
        self, grid: Grid, ctx: ServerContext, state: dict, rctx: RoundCtx, rec: RoundRecord, num_rounds: int
    ) -> dict:
        s = self.strategy
        nodes, config, state = s.configure_train(state, grid.node_ids(), rctx)
        config = {**config, **(self.train_config(rctx.round) if self.train_config else {})}
        config.setdefault("round", rctx.round)
        rec.sampled = nodes
        ctx.observer.round_started(rctx.round, num_rounds, TRAIN, len(nodes))
        acc = s.open(state, replace(rctx, cohort=len(nodes)))
        msgs = self._messages(TRAIN, nodes, state["params"], config, ctx, rctx.round)
        for reply in send_and_receive(grid, msgs, self.round_timeout):
            node = reply.metadata.src
            if reply.error is None:
                try:
                    metrics = check_metrics(reply.content.metrics, f"train reply from node {node}")
                    acc = s.add(acc, node, reply.content.arrays, metrics, rctx)
                except (InvalidReply, TypeError) as e:
                    reply = reply.error_reply("invalid-reply", str(e))
                    reply.metadata.src = node
            if reply.error is None:
                rec.replied.append(node)
            else:
                rec.failures.append(Failure(node, TRAIN, str(reply.error)))
                log.warning("round %d: node %d failed to train: %s", rctx.round, node, reply.error)
            ctx.observer.reply(reply.error is None)
            del reply  # folded: let it go before the grid assembles the next (one model, not two)
        need = max(self.min_replies, s.min_replies)
        if acc.replies < need:
            reasons = "; ".join(
                f"node {f.node}: {f.error.splitlines()[-1] if f.error else ''}" for f in rec.failures[:5]
            )
            raise RoundFailed(
                f"round {rctx.round}: {acc.replies} of {len(nodes)} sampled nodes replied successfully, "
                f"{need} needed. First failures: {reasons or 'none'}"
            )
        state, rec.train, rec.server = s.close(acc, rctx)
        return state

    def _evaluate(
        self, grid: Grid, ctx: ServerContext, state: dict, rctx: RoundCtx, rec: RoundRecord, num_rounds: int
    ) -> None:
        nodes = self.strategy.configure_evaluate(state, grid.node_ids(), rctx)
        if not nodes:
            return
        config: Config = {"round": rctx.round, **(self.evaluate_config(rctx.round) if self.evaluate_config else {})}
        rec.evaluate_sampled = nodes
        ctx.observer.round_started(rctx.round, num_rounds, EVALUATE, len(nodes))
        mean = MetricsMean()
        for reply in send_and_receive(
            grid, self._messages(EVALUATE, nodes, state["params"], config, ctx, rctx.round), self.round_timeout
        ):
            node = reply.metadata.src
            if reply.error is None:
                try:
                    m = check_metrics(reply.content.metrics, f"evaluate reply from node {node}")
                    mean.add(m, float(m.get("num-examples", 1)))
                    rec.evaluate_replied.append(node)
                except TypeError as e:
                    rec.failures.append(Failure(node, EVALUATE, f"invalid-reply: {e}"))
            else:
                rec.failures.append(Failure(node, EVALUATE, str(reply.error)))
                log.warning("round %d: node %d failed to evaluate: %s", rctx.round, node, reply.error)
            ctx.observer.reply(reply.error is None)
        rec.evaluate = mean.result()

    def _central(self, rnd: int, arrays: Arrays) -> Metrics:
        out = self.evaluate_fn(rnd, arrays) if self.evaluate_fn else None
        if out is None:
            return {}
        if isinstance(out, tuple):
            loss, metrics = out
            out = {"loss": float(loss), **metrics}
        return check_metrics(out, "evaluate_fn")
