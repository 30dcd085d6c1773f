"""The one mechanism that moves a running gang, checkpoint first (``policy.evacuation`` decides).

Owns: the moves in progress (``policy.evacuation.Move``, one per job at most), each written on its
job row first (``JobStore.set_moving``: the intent) and read back when a Coordinator starts; the
checkpoint asks its gang's rank 0 has not seen yet (``ctx.should_checkpoint`` answers yes once per
ask); and ending a move with its transition (``apply``, the loop's one place a Step is carried out).

Used by preemption (``control/preemption.py``), node health and drain (``control/health/``) and,
through the Coordinator actor, the BudgetAutoscaler (``checkpoint_now`` / ``checkpoint_pending`` /
``move_off``). A Coordinator that restarts mid-move ends the move the way it was going (a preempted
gang is queued again, a moved one placed again, with the move's cause) — not as a restart, and not
twice: the row's ``moving`` is cleared by that transition.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from raycluster import constants as C
from raycluster.policy.evacuation import Move, MoveKind, Verdict, checkpointed, decide_move, move_step
from raycluster.policy.steps import Step
from raycluster.store.jobs import JobRecord, JobStore
from raycluster.store.lifecycle import Cause, JobState

log = logging.getLogger("raycluster.coordinator")


class Evacuations:
    def __init__(self, store: JobStore, *, newest_step: Callable[[str], int | None],
                 job: Callable[[str], JobRecord | None], apply: Callable[[JobRecord, Step, float], JobRecord],
                 clock: Callable[[], float]):
        self.store = store
        self._newest_step = newest_step  # the job's newest complete checkpoint step (the CheckpointManager's)
        self._job = job  # the job's row as the loop last saw it (None: not active)
        self._apply = apply
        self.clock = clock
        self.moves: dict[str, Move] = {}
        for row in store.moving():
            try:
                move = Move.from_row(row)
            except (KeyError, ValueError, TypeError):
                log.warning("ignoring an unreadable move on a job row: %r", row)
                continue
            self.moves[move.job_id] = move
        self._wanted: set[tuple[str, int]] = set()  # (job, attempt) asked to checkpoint, not yet told
        self._wanted_lock = threading.Lock()  # rank 0 asks from the actor's other threads
        self._checked_at: dict[str, float] = {}
        self.ended: list[Callable[[Move, float], None]] = []  # told of every move ended by a transition

    def __bool__(self) -> bool:
        return bool(self.moves)

    def of(self, cause: Cause | None = None) -> dict[str, Move]:
        return {j: m for j, m in self.moves.items() if cause is None or m.cause == cause}

    # ------------------------------------------------------------------ start
    def ask(self, rec: JobRecord, cause: Cause, reason: str, wait_s: float, kind: MoveKind, now: float,
            for_job: str | None = None) -> Move | None:
        """Start moving a RUNNING gang: record the move on its row, then ask it to checkpoint now.
        A gang already being moved in this attempt keeps that move (returned). None: it is no
        longer RUNNING in that attempt."""
        old = self.moves.get(rec.id)
        if old is not None and old.attempt == rec.attempt:
            return old
        move = Move(rec.id, rec.attempt, cause, reason, now, self._newest_step(rec.id), wait_s, kind, for_job)
        if not self.store.set_moving(rec.id, rec.attempt, move.to_row()):
            return None
        self.moves[rec.id] = move
        self._checked_at[rec.id] = now
        with self._wanted_lock:
            self._wanted.add((rec.id, rec.attempt))
        log.info("%s: %s; asked to checkpoint now, then moved", rec.id, reason)
        return move

    def checkpoint_wanted(self, job_id: str, attempt: int) -> bool:
        """(Rank 0 of a running gang asks.) Whether to checkpoint now; yes once per ask."""
        key = (job_id, int(attempt))
        with self._wanted_lock:
            if key in self._wanted:
                self._wanted.discard(key)
                return True
        return False

    # ------------------------------------------------------------------ end
    def tick(self, now: float) -> None:
        """Check each move (at most every ``EVACUATE_CHECK_INTERVAL_S``): end it once its gang
        checkpointed or waited long enough; forget it once its gang is gone."""
        for jid, move in list(self.moves.items()):
            if now - self._checked_at.get(jid, float("-inf")) < C.EVACUATE_CHECK_INTERVAL_S:
                continue
            self._checked_at[jid] = now
            rec = self._job(jid)
            state, attempt = (rec.state, rec.attempt) if rec is not None else (None, None)
            running = state == JobState.RUNNING and attempt == move.attempt
            newest = self._newest_step(jid) if running and move.kind != MoveKind.HOLD else None
            verdict = decide_move(move, state, attempt, newest, now)
            if verdict == Verdict.DROP:
                self._forget(move, clear_row=running)
                if running:
                    log.info("%s: %s; nobody ended the move: it stays", jid, move.reason)
            elif verdict == Verdict.MOVE:
                self._end(rec, move, newest, now)

    def move_now(self, rec: JobRecord, cause: Cause, reason: str, now: float, note: str = "") -> JobRecord:
        """End the gang's move now (the asker drained its node; a node presumed dead: no checkpoint
        will come). Without a move in progress, one is made for the record of it."""
        move = self.moves.get(rec.id)
        if move is None or move.attempt != rec.attempt or move.kind == MoveKind.HOLD:
            move = Move(rec.id, rec.attempt, cause, reason, now, move.before_step if move else None, 0.0,
                        MoveKind.RECOVER)
        return self._end(rec, move, self._newest_step(rec.id), now, note)

    def after_restart(self, rec: JobRecord) -> Step | None:
        """The step ending the move of a RUNNING gang whose ranks died with the previous Coordinator
        (None: it was not being moved)."""
        move = self.moves.get(rec.id)
        if move is None or move.attempt != rec.attempt:
            return None
        if move.kind == MoveKind.HOLD:
            move = Move(move.job_id, move.attempt, move.cause, move.reason, move.since, move.before_step, 0.0,
                        MoveKind.RECOVER)
        self._forget(move, clear_row=False)  # (the transition clears the row)
        return move_step(rec, move, self._newest_step(rec.id),
                         "the Coordinator restarted while it was being moved")

    def cancel(self, job_id: str, causes: frozenset[Cause]) -> None:
        """Stop moving a gang (what it was moved for no longer holds), if its move has one of ``causes``."""
        move = self.moves.get(job_id)
        if move is not None and move.cause in causes:
            rec = self._job(job_id)
            self._forget(move, clear_row=rec is not None and rec.state == JobState.RUNNING)
            log.info("%s: no longer moved (%s)", job_id, move.reason)

    def drop(self, job_id: str) -> None:
        """The job ended (its row's move was cleared by that transition)."""
        move = self.moves.get(job_id)
        if move is not None:
            self._forget(move, clear_row=False)

    def pending(self, asked: dict[str, list]) -> list[str]:
        """The jobs of ``asked`` ({job: [attempt, step before]}) still running that attempt without a
        newer complete checkpoint."""
        out = []
        for job_id, (attempt, before) in asked.items():
            rec = self._job(job_id)
            if rec is None or rec.state != JobState.RUNNING or rec.attempt != int(attempt):
                continue  # ended or moved on: nothing to wait for
            move = self.moves.get(job_id)
            probe = move if move is not None else Move(job_id, int(attempt), Cause.BUDGET, "", 0.0, before, 0.0,
                                                       MoveKind.HOLD)
            if not checkpointed(probe, self._newest_step(job_id)):
                out.append(job_id)
        return out

    def _end(self, rec: JobRecord, move: Move, newest: int | None, now: float, note: str = "") -> JobRecord:
        self._forget(move, clear_row=False)  # the transition clears the row
        out = self._apply(rec, move_step(rec, move, newest, note), now)
        for fn in self.ended:
            fn(move, now)
        return out

    def _forget(self, move: Move, clear_row: bool) -> None:
        if self.moves.get(move.job_id) == move:
            self.moves.pop(move.job_id, None)
        self._checked_at.pop(move.job_id, None)
        with self._wanted_lock:
            self._wanted.discard((move.job_id, move.attempt))
        if clear_row:
            self.store.set_moving(move.job_id, move.attempt, None)
