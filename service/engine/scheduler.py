"""What the decode loop does next: which requests join, which one is preempted, and what goes
into the next step. Decisions only: no model, no llama.cpp; the loop carries them out through
the runner (issue #14, in the manner of vLLM's scheduler / model-runner split). Each step the
loop asks once (``schedule``: one StepPlan of who ends, who starts and what is decoded) and
hands the plan back (``update``); a full cache is ``cache_full``'s (issue #23).

- Requests join between steps while a sequence id is free, in arrival order. A request whose
  prompt shares much more with a prompt still being evaluated than with the kept one waits for
  that prompt to finish, then copies it instead of evaluating the same instructions beside it;
  those behind it do not wait with it.
- Sequence 0 holds the last finished prompt; a joining request copies the prefix it shares
  with it (in a unified KV cache that copy only tags cells). Where a finished sequence kept in
  host RAM (``prompt_cache``) shares more, its cells beyond that prefix are restored instead of
  evaluated: a popular request's facts, a conversation up to its last turn (issue #22).
- A step takes one token (or a jump-forward run) from every decoding request first, then
  prompt chunks in what is left of the batch, so one cold prompt does not stall the others.
  While others decode, a prompt longer than four of the step's prompt shares is evaluated in
  small chunks, and not at all while another request is writing its first words (issue #21);
  steps carrying such chunks take at most half the time while anyone decodes.
- When the cache is full the kept prompt's own tail goes first (what it did not share with the
  prompt kept before it: a request's facts or an abuser's long message, issue #21), then the
  rest of it, then the youngest request is preempted: it keeps its tokens and waits at the head
  of the queue; its cells go to the prompt cache and are restored when it starts again (swap,
  issue #22: recomputing 1,577 tokens six times over cost one 16-stream wave a third of its
  speed), or, where the cache has let them go, it is evaluated again (recompute).
  Nobody joins until a request finishes, so joining and preempting never take turns.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

from service.engine.prompt_cache import MIN_RESTORED_TOKENS, PromptCache, Restore

PROMPT_HOLDER = 0  # the sequence id that keeps the last prompt for the next request to share
# A request waits for a prompt being evaluated when that one shares this many more tokens.
SHARE_LATER_MARGIN = 64
# Decode steps in which a request is "starting": its first readable words take about this many
# on the embedded model (JSON keys are forced in runs, so most steps write text).
FIRST_WORDS_STEPS = 16
# While others decode, a long prompt advances by this fraction of the step's prompt share.
LONG_PROMPT_CHUNK_DIVISOR = 16
# A prompt is long when what it does not share is more than this many steps' prompt shares:
# an abuser's 2,000-token message (issue #21), not a conversation's history of a few turns
# (460-650 tokens on the embedded model), whose reader waited up to 55 s for the first words when
# it was chunked like one among 16 streams (issue #22).
LONG_PROMPT_SHARES = 4
# While others decode, steps carrying a long prompt's chunk take at most this share of the time.
# Issue #21 on a slower 2-core host, where a step of k tokens costs about k times one: with one
# 16-token chunk of two abusers' 2,000-token prompts in every step, steps took about 0.4 s and a
# normal answer wrote 3 tokens/s, past its 120 s deadline (12.6 s alone).
LONG_PROMPT_TIME_SHARE = 0.5


class Phase(StrEnum):
    WAITING = "waiting"  # queued, never started
    PREFILL = "prefill"  # its prompt (or, after a preemption, all its tokens) is being evaluated
    DECODING = "decoding"  # one token (or a forced run) per step
    PREEMPTED = "preempted"  # evicted from a full cache: waits at the queue's head, tokens kept
    DONE = "done"


Payload = TypeVar("Payload")


@dataclass(eq=False)
class ScheduledRequest(Generic[Payload]):
    """A request as the scheduler sees it: its tokens and where they are. ``payload`` is what
    the loop keeps with it (its reader, grammar state, statistics)."""

    prompt: list[int]
    payload: Payload
    cancelled: threading.Event = field(default_factory=threading.Event)
    deadline: float = float("inf")
    phase: Phase = Phase.WAITING
    seq_id: int = -1
    # Tokens in this request's KV cells (positions 0..n-1), and those still to evaluate: the
    # last of ``pending`` gives the logits that choose the next token.
    cached: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    # Its prompt was evaluated (once is enough: a preempted request's second evaluation is not
    # a prompt for others to share, and it decodes first in every step).
    prompt_evaluated: bool = False
    # Its prompt did not fit in one step's prompt share while others decode (issue #21).
    long_prompt: bool = False
    decode_steps: int = 0  # steps since its prompt was evaluated
    prompt_cells: int = 0  # cells its prompt (and forced opening) filled, once evaluated
    held_back: int = 0  # steps in a row a long prompt waited for others' first words

    @property
    def tokens(self) -> list[int]:
        """Everything it has: the prompt before it starts, then cached + pending."""
        return self.cached + self.pending if self.cached or self.pending else self.prompt


@dataclass(frozen=True)
class Placement(Generic[Payload]):
    """Start ``request`` in sequence ``request.seq_id``; restore ``restore``'s cells, if any,
    then copy its first ``shared`` tokens from the prompt holder. ``first``: its first start
    (not a return after a preemption)."""

    request: ScheduledRequest[Payload]
    shared: int
    first: bool = True
    restore: Restore | None = None


@dataclass(frozen=True)
class KeepPrompt:
    """Make the holder keep ``prompt``: its cells from ``common`` on are replaced by those of
    sequence ``source``."""

    source: int
    common: int
    prompt: list[int]


@dataclass(frozen=True)
class DropHolder:
    """Free the prompt holder's cells from position ``keep`` on."""

    keep: int = 0


@dataclass(frozen=True)
class Preempt(Generic[Payload]):
    """Free ``seq_id``'s cells; ``request`` waits to start again. Where ``keep`` is (start, its
    tokens), its cells from position start on go to the prompt cache first, to be restored when
    it starts again rather than evaluated again."""

    request: ScheduledRequest[Payload]
    seq_id: int
    keep: tuple[int, list[int]] | None = None


@dataclass(frozen=True)
class StepPlan(Generic[Payload]):
    """Everything the loop does next, decided at once (issue #23, in the manner of vLLM's
    ``schedule()``): end ``ended`` (cancelled: True, past its deadline: False; its sequence id,
    already freed here, or -1), set up ``started`` (copy the shared prefix), and decode
    ``chunks``: (request, how many of its pending tokens). After the step, ``update`` takes the
    plan back."""

    ended: list[tuple[ScheduledRequest[Payload], bool, int]]
    started: list[Placement[Payload]]
    chunks: list[tuple[ScheduledRequest[Payload], int]]


class NoRoom(Exception):
    """Not even one request fits the cache (a prompt + max_tokens check failed to hold)."""


def common_prefix(a: list[int], b: list[int]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


class Scheduler(Generic[Payload]):
    """Single-threaded: the decode loop calls it between steps."""

    def __init__(
        self,
        max_running: int,
        step_tokens: int,
        prefill_tokens: int | None = None,
        prompt_cache: PromptCache | None = None,
    ) -> None:
        self.step_tokens = step_tokens
        self.prompt_cache = prompt_cache
        # Prompt tokens a step may carry while others decode (issue #21): two 2,000-token prompts
        # filled every step with 512 prompt tokens, and a normal answer's next word waited for them.
        self.prefill_tokens = min(prefill_tokens or step_tokens, step_tokens)
        self.waiting: deque[ScheduledRequest[Payload]] = deque()
        self.running: list[ScheduledRequest[Payload]] = []  # in admission order: last = youngest
        self.holder: list[int] = []  # the tokens the prompt holder keeps
        # How much of the holder the prompt kept before it shared too: what the next prompt
        # most likely shares (the instructions), kept when the cache is full.
        self._holder_shared = 0
        self._free_ids = deque(range(PROMPT_HOLDER + 1, PROMPT_HOLDER + 1 + max_running))
        self._room_wanted = False  # a request was preempted: admit nobody until one finishes
        # Seconds of long-prompt steps owed (negative) to the decoding requests; never banked
        # above 0, so time without long prompts buys them no burst later.
        self._long_prompt_credit_s = 0.0

    # -- joining -----------------------------------------------------------------------------

    def add(self, request: ScheduledRequest[Payload]) -> None:
        self.waiting.append(request)

    def admissible(self) -> bool:
        return bool(self.waiting) and bool(self._free_ids) and not self._room_wanted

    def next_to_start(self) -> ScheduledRequest[Payload] | None:
        """The request to take off the queue now, or None to wait. A cancelled one is returned
        too, for the loop to end."""
        if not self.admissible():
            return None
        # In arrival order, passing over those that wait to share a prompt being evaluated:
        # issue #21 saw a normal request queued 8 s behind an abuser's second long message,
        # which waited for the first one.
        for request in self.waiting:
            if request.cancelled.is_set() or not self._better_shared_later(request):
                self.waiting.remove(request)
                return request
        return None

    def _better_shared_later(self, request: ScheduledRequest[Payload]) -> bool:
        """Whether to wait for a prompt being evaluated that shares more with this one, and copy
        it when it is done, instead of evaluating our own now. Only while that prompt has no more
        left to evaluate than we would: waiting for a 2,000-token prompt to share its first 800
        tokens held a short request's first word for seconds (issue #21)."""
        tokens = request.tokens
        kept = common_prefix(self.holder, tokens)
        own = len(tokens) - kept
        return any(
            not other.prompt_evaluated
            and common_prefix(other.prompt, tokens) > kept + SHARE_LATER_MARGIN
            and len(other.pending) <= own
            for other in self.running
        )

    def place(self, request: ScheduledRequest[Payload]) -> Placement[Payload]:
        """Give ``request`` a sequence: on its first start it begins with ``pending`` (its prompt
        and forced opening, set when it was added) or else its prompt; after a preemption, with
        all its tokens."""
        first = request.phase is Phase.WAITING
        if first and not request.pending:
            request.pending = list(request.prompt)
        tokens = request.cached + request.pending
        # The last token is evaluated again even when cached: its logits choose the next one.
        shared = max(min(common_prefix(self.holder, tokens), len(tokens) - 1), 0)
        # A preempted request finds the cells it had, if the prompt cache still keeps them.
        restore = self.prompt_cache.best(tokens, shared) if self.prompt_cache is not None else None
        request.seq_id = self._free_ids.popleft()
        self._starts_from(request, tokens, restore.upto if restore else shared)
        request.phase = Phase.PREFILL
        self.running.append(request)
        return Placement(request, shared, first, restore)

    def _starts_from(self, request: ScheduledRequest[Payload], tokens: list[int], cached: int) -> None:
        request.cached, request.pending = tokens[:cached], tokens[cached:]
        if not request.prompt_evaluated:
            request.long_prompt = len(request.pending) > LONG_PROMPT_SHARES * self.prefill_tokens

    def restore_failed(self, placement: Placement[Payload]) -> bool:
        """The cache had no room for ``placement``'s restore. A preempted request waits again at
        the head of the queue while others run (True): evaluated again now, it filled the cache
        and was preempted once more, over and over. Otherwise it evaluates what the holder does
        not share, as without a saved copy (False)."""
        request = placement.request
        tokens = request.cached + request.pending
        if placement.first or len(self.running) < 2:
            self._starts_from(request, tokens, placement.shared)
            return False
        self.running.remove(request)
        self._free_ids.append(request.seq_id)
        request.seq_id = -1
        request.cached, request.pending = [], tokens
        request.phase = Phase.PREEMPTED
        self._room_wanted = True
        self.waiting.appendleft(request)
        return True

    def cells_worth_keeping(self, request: ScheduledRequest[Payload]) -> tuple[int, int] | None:
        """The positions [start, end) of ``request``'s prompt cells, finishing with its answer,
        worth keeping in the prompt cache, or None. From the prefix the kept prompt shared with
        the one before it (the instructions, which the holder keeps for everyone), so that an
        entry holds a request's own facts and history, not another copy of them."""
        if not request.prompt_evaluated or request.seq_id < 0:
            return None
        end = request.prompt_cells
        start = self._keep_from(request.cached[:end])
        return None if start is None else (start, end)

    def _keep_from(self, tokens: list[int]) -> int | None:
        """Where cells of ``tokens`` are worth keeping in the prompt cache from, or None."""
        if self.prompt_cache is None:
            return None
        start = min(common_prefix(self.holder, tokens), self._holder_shared)
        return start if len(tokens) - start >= MIN_RESTORED_TOKENS else None

    # -- leaving -----------------------------------------------------------------------------

    def overdue(self, now: float) -> Iterator[tuple[ScheduledRequest[Payload], bool]]:
        """Cancelled (True) or past their deadline (False), running or waiting; they are taken
        off the queue here, and the loop releases the running ones."""
        leaving = [r for r in [*self.running, *self.waiting] if r.cancelled.is_set() or now > r.deadline]
        for request in leaving:
            if request in self.waiting:
                self.waiting.remove(request)
            yield request, request.cancelled.is_set()

    def release(self, request: ScheduledRequest[Payload]) -> int:
        """``request`` is done; the sequence id whose cells the loop frees (-1: none)."""
        if request in self.running:
            self.running.remove(request)
            self._room_wanted = False
        if request in self.waiting:
            self.waiting.remove(request)
        seq_id, request.seq_id = request.seq_id, -1
        if seq_id >= 0:
            self._free_ids.append(seq_id)
        request.phase = Phase.DONE
        return seq_id

    # -- the step ----------------------------------------------------------------------------

    def schedule(self, now: float) -> StepPlan[Payload]:
        """Who ends (cancelled or past its deadline, running or waiting), who starts, and what
        the next step decodes."""
        ended = [(request, cancelled, self.release(request)) for request, cancelled in list(self.overdue(now))]
        started = []
        while (request := self.next_to_start()) is not None:
            if request.cancelled.is_set():
                ended.append((request, True, self.release(request)))
            else:
                started.append(self.place(request))
        return StepPlan(ended, started, self.plan())

    def update(self, plan: StepPlan[Payload], step_s: float = 0.0) -> list[KeepPrompt]:
        """The step of ``plan`` ran, in ``step_s`` seconds: its tokens are in the cache. What the
        holder is to keep (a prompt that just finished), for the loop to copy before anyone leaves."""
        self._account_long_prompt_time(plan, step_s)
        kept = (self.evaluated(request, take) for request, take in plan.chunks)
        return [keep for keep in kept if keep is not None]

    def plan(self) -> list[tuple[ScheduledRequest[Payload], int]]:
        """(request, how many of its pending tokens) for the next step; called once a step.

        Decoding requests first, then prompt chunks within ``step_tokens``, and within
        ``prefill_tokens`` while anyone decodes, the shortest prompt first, so a long one cannot
        hold up the first word of a short one. While anyone decodes, a long prompt (more than
        LONG_PROMPT_SHARES times ``prefill_tokens``) advances by a sixteenth of it, one a step, and
        waits while another request is starting (its short prompt, or its first
        FIRST_WORDS_STEPS steps), for at most that many steps in a row; steps carrying it take
        at most LONG_PROMPT_TIME_SHARE of the time (``update`` counts it). Issue #21: prompt tokens
        cost about the same per token in any chunk size, but each one in a step delays every
        decoding request's next token; two abusers' 2,000-token prompts in 256-token chunks made
        each step last a second, and a normal user's first words came after 3.7 s, not 0.3 s."""
        budget = self.step_tokens
        plan = []
        decoding = [r for r in self.running if r.prompt_evaluated and r.pending]
        for request in decoding:
            take = min(len(request.pending), budget)
            plan.append((request, take))
            budget -= take
        if decoding:
            budget = min(budget, self.prefill_tokens)
        prompts = sorted(
            (r for r in self.running if not r.prompt_evaluated and r.pending), key=lambda r: len(r.pending)
        )
        someone_starting = any(self._starting(r) for r in self.running)
        long_taken = False
        for request in prompts:
            take = min(len(request.pending), budget)
            if decoding and request.long_prompt:
                if self._long_prompt_credit_s < 0:
                    continue  # its share of the time is spent: the decoding requests' turn
                if long_taken or (someone_starting and request.held_back < FIRST_WORDS_STEPS):
                    request.held_back += 1
                    continue
                take = min(take, max(1, self.prefill_tokens // LONG_PROMPT_CHUNK_DIVISOR))
                long_taken = True
            if take:
                request.held_back = 0
                plan.append((request, take))
                budget -= take
        return plan

    def _account_long_prompt_time(self, plan: StepPlan[Payload], step_s: float) -> None:
        """Every step earns long prompts LONG_PROMPT_TIME_SHARE of its time; a step that carried
        one's chunk beside decoding requests spends all of it. Read before ``evaluated`` marks
        a prompt that just finished as evaluated."""
        credit = self._long_prompt_credit_s + LONG_PROMPT_TIME_SHARE * step_s
        requests = [request for request, _ in plan.chunks]
        beside_decoding = any(r.prompt_evaluated for r in requests)
        if beside_decoding and any(r.long_prompt and not r.prompt_evaluated for r in requests):
            credit -= step_s
        self._long_prompt_credit_s = min(0.0, credit)

    def _starting(self, request: ScheduledRequest[Payload]) -> bool:
        """Whether ``request`` is about to write its first words, which a long prompt should
        not slow down."""
        if request.prompt_evaluated:
            return request.decode_steps < FIRST_WORDS_STEPS
        return not request.long_prompt

    def evaluated(self, request: ScheduledRequest[Payload], take: int) -> KeepPrompt | None:
        """``take`` of ``request``'s pending tokens are in the cache now. When that finished
        its prompt, the holder keeps it for the next request (usually the same instructions,
        or the next turn of the same conversation)."""
        request.cached.extend(request.pending[:take])
        del request.pending[:take]
        if request.prompt_evaluated:
            request.decode_steps += 1
        if request.pending or request.phase is Phase.DECODING:
            return None
        request.phase = Phase.DECODING
        if request.prompt_evaluated:
            return None
        request.prompt_evaluated = True
        request.prompt_cells = len(request.cached)
        common = common_prefix(self.holder, request.prompt)
        if common < len(request.prompt) or len(self.holder) != len(request.prompt):
            # The same prompt again shares all of itself: what other prompts share stays.
            self._holder_shared = common
        self.holder = list(request.prompt)
        return KeepPrompt(request.seq_id, common, request.prompt)

    def cache_full(self) -> DropHolder | Preempt[Payload]:
        """What to free when the cache cannot take the step: the kept prompt's own tail, then
        the rest of it, then the youngest request. Raises NoRoom when a request alone does not
        fit. Issue #21: dropping an abuser's 2,500-token prompt whole also dropped the
        instructions, and the next normal request evaluated 862 tokens instead of 98."""
        if 0 < self._holder_shared < len(self.holder):
            del self.holder[self._holder_shared :]
            return DropHolder(keep=self._holder_shared)
        if self.holder:
            self.holder = []
            self._holder_shared = 0
            return DropHolder()
        if len(self.running) < 2:
            raise NoRoom("the KV cache has no room for a single sequence")
        victim = self.running.pop()
        seq_id, victim.seq_id = victim.seq_id, -1
        self._free_ids.append(seq_id)
        start = self._keep_from(victim.cached)
        keep = None if start is None else (start, victim.cached)
        victim.pending = victim.cached + victim.pending
        victim.cached = []
        victim.phase = Phase.PREEMPTED
        self._room_wanted = True
        self.waiting.appendleft(victim)
        return Preempt(victim, seq_id, keep)

    def reset(self) -> None:
        """After a failed step the cache is cleared: nothing is kept."""
        self.holder = []
        self._holder_shared = 0
