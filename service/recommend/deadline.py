"""How long one generation may run: a fixed ``LEAFRESH_GENERATION_TIMEOUT_S``, or (``auto``, the
default) a deadline that follows the decode speed this machine showed at warm-up.

Why: the production model (Mistral-7B-Instruct-v0.3 Q4_K_M) on 2 CPU cores decodes about 3.7-4.0
tokens/s, and its tokenizer spends 1.97 tokens per Korean syllable of our answer's JSON (README,
"The stand-in: the production model's shape, made offline"), so one answer takes minutes. A
fixed 120 s deadline failed every such request with 504 (issue #11), while the tiny models and
any GPU finish in seconds. Past what the relay waits for nothing is gained: the Spring relay
gives up on a stream after 300 s, and a request may first have waited in the queue, so the
deadline ends early enough for the relay to see ``close`` even then (the ceiling, from the
settings: relay wait - queue timeout - 10 s; 230 s by default). This module is the arithmetic;
service.recommend.preflight measures the speed and applies it.
"""

from __future__ import annotations

from dataclasses import dataclass

AUTO_MIN_S = 120.0
# The Spring relay's emitter gives up after 300 s; keep room for the error and close events.
AUTO_MAX_S = 280.0
# The deadline covers the longest answer the grammar allows, with this much to spare.
MARGIN = 1.25
# LEAFRESH_SHUTDOWN_GRACE_S=auto (issue #20): a draining replica gives what it accepted twice a
# typical answer, so an answer that has just started and one queued behind it both finish; never
# under AUTO_GRACE_MIN_S, never past the generation deadline (nothing runs longer anyway). Until
# the warm-up has measured the machine, AUTO_GRACE_UNMEASURED_S.
AUTO_GRACE_MIN_S = 15.0
AUTO_GRACE_UNMEASURED_S = 30.0


@dataclass(frozen=True)
class DeadlinePlan:
    deadline_s: float
    tokens_per_s: float
    typical_answer_tokens: int
    longest_answer_tokens: int

    @property
    def typical_answer_s(self) -> float:
        return self.typical_answer_tokens / self.tokens_per_s if self.tokens_per_s > 0 else float("inf")

    @property
    def longest_answer_s(self) -> float:
        return self.longest_answer_tokens / self.tokens_per_s if self.tokens_per_s > 0 else float("inf")

    @property
    def drain_grace_s(self) -> float:
        """The auto shutdown grace: time for what a draining replica has accepted to finish."""
        return min(max(2 * self.typical_answer_s, AUTO_GRACE_MIN_S), self.deadline_s)

    @property
    def too_slow(self) -> bool:
        """Even a typical answer would not finish in time: most requests will end with 504."""
        return self.typical_answer_s > self.deadline_s

    def describe(self) -> str:
        return (
            f"decode {self.tokens_per_s:.1f} tokens/s at warm-up: a typical answer (~{self.typical_answer_tokens} tokens) "
            f"takes about {self.typical_answer_s:.0f} s, the longest the grammar allows (~{self.longest_answer_tokens} "
            f"tokens) about {self.longest_answer_s:.0f} s; generation deadline {self.deadline_s:.0f} s"
        )

    def describe_with_the_engine_full(self, alone: DeadlinePlan) -> str:
        """This plan sized at each stream's speed with the engine full, ``alone`` at one stream's."""
        return (
            f"decode {alone.tokens_per_s:.1f} tokens/s alone at warm-up, {self.tokens_per_s:.1f} each with the engine "
            f"full: the longest answer the grammar allows (~{self.longest_answer_tokens} tokens) then takes about "
            f"{self.longest_answer_s:.0f} s; generation deadline {self.deadline_s:.0f} s"
        )


def plan_deadline(
    tokens_per_s: float, typical_answer_tokens: int, longest_answer_tokens: int, ceiling_s: float = AUTO_MAX_S
) -> DeadlinePlan:
    """The auto deadline: time for the longest answer at the measured speed, with a margin,
    never under ``AUTO_MIN_S`` (a slow moment must not fail fast machines) nor over ``AUTO_MAX_S``
    or ``ceiling_s`` (what the relay leaves after the queue)."""
    highest = min(AUTO_MAX_S, ceiling_s)
    wanted = MARGIN * longest_answer_tokens / tokens_per_s if tokens_per_s > 0 else highest
    deadline = min(max(wanted, min(AUTO_MIN_S, highest)), highest)
    return DeadlinePlan(deadline, tokens_per_s, typical_answer_tokens, longest_answer_tokens)
