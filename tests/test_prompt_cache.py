"""Host RAM's prompt cache (issue #22): which saved cells a prompt restores, what the cache
keeps within its size, and the scheduler's use of it, without a model."""

from __future__ import annotations

from service.engine.prompt_cache import MIN_RESTORED_TOKENS, PromptCache, packed, shared_length
from service.engine.scheduler import Phase, Preempt, ScheduledRequest, Scheduler, common_prefix

INSTRUCTIONS = list(range(100, 300))  # 200 tokens every prompt starts with
FACTS = list(range(1000, 1060))  # one combination's facts
ANSWER = list(range(2000, 2100))


def saved(cache: PromptCache, tokens: list[int], start: int = len(INSTRUCTIONS), size: int = 1000) -> None:
    assert cache.put(tokens, start, bytearray(size))


def test_a_repeat_restores_the_facts_beyond_what_the_holder_shares() -> None:
    cache = PromptCache(1 << 20)
    saved(cache, [*INSTRUCTIONS, *FACTS, *ANSWER])
    repeat = [*INSTRUCTIONS, *FACTS, 9]
    found = cache.best(repeat, covered=len(INSTRUCTIONS))
    assert found is not None
    assert (found.covered, found.upto) == (len(INSTRUCTIONS), len(INSTRUCTIONS) + len(FACTS))


def test_the_last_token_is_never_restored_its_logits_choose_the_next() -> None:
    cache = PromptCache(1 << 20)
    prompt = [*INSTRUCTIONS, *FACTS]
    saved(cache, [*prompt, *ANSWER])
    found = cache.best(prompt, covered=len(INSTRUCTIONS))
    assert found is not None and found.upto == len(prompt) - 1


def test_nothing_is_restored_that_spares_too_little_or_needs_cells_the_holder_lacks() -> None:
    cache = PromptCache(1 << 20)
    short_facts = FACTS[: MIN_RESTORED_TOKENS - 1]
    saved(cache, [*INSTRUCTIONS, *short_facts, *ANSWER])
    assert cache.best([*INSTRUCTIONS, *short_facts, 5, 6], covered=len(INSTRUCTIONS)) is None
    saved(cache, [*INSTRUCTIONS, *FACTS, *ANSWER])
    # The holder no longer has the instructions the entry leaves to it.
    assert cache.best([*INSTRUCTIONS, *FACTS, 9], covered=10) is None


def test_the_same_prompt_again_replaces_its_entry() -> None:
    cache = PromptCache(1 << 20)
    saved(cache, [*INSTRUCTIONS, *FACTS])
    saved(cache, [*INSTRUCTIONS, *FACTS])
    assert len(cache) == 1


def test_an_entry_kept_with_the_instructions_is_narrowed_to_what_the_holder_leaves_to_it() -> None:
    # The first request's entry holds the instructions too: no holder shared them yet.
    cache = PromptCache(1 << 20)
    prompt = [*INSTRUCTIONS, *FACTS, *ANSWER]
    saved(cache, prompt, start=0, size=3000)
    found = cache.best([*prompt, 9], covered=len(INSTRUCTIONS))
    assert found is not None and found.cells.start == 0
    cache.narrow(found.cells, found.covered, bytearray(1000))
    again = cache.best([*prompt, 9], covered=len(INSTRUCTIONS))
    assert again is not None and again.cells.start == len(INSTRUCTIONS) and again.upto == found.upto
    assert len(cache) == 1 and cache.used_bytes == again.cells.size


def test_of_entries_that_spare_as_much_the_one_with_fewer_cells_is_restored() -> None:
    cache = PromptCache(1 << 20)
    prompt = [*INSTRUCTIONS, *FACTS]
    saved(cache, prompt, start=0)
    saved(cache, prompt)
    found = cache.best([*prompt, 9], covered=len(INSTRUCTIONS))
    assert found is not None and found.cells.start == len(INSTRUCTIONS)


def test_the_longest_shared_entry_wins_and_the_least_recently_used_goes_first() -> None:
    cache = PromptCache(5000)  # two of these entries fit, not three
    turn_one = [*INSTRUCTIONS, *FACTS, *ANSWER]
    saved(cache, turn_one)
    saved(cache, [*INSTRUCTIONS, *FACTS[:40], 7, 7])
    turn_two = [*turn_one, 5, 6, 7]
    found = cache.best(turn_two, covered=len(INSTRUCTIONS))
    assert found is not None and found.upto == len(turn_one)
    # turn_one was just used: the other goes when a third does not fit beside both.
    saved(cache, [*INSTRUCTIONS, *range(5000, 5100)])
    assert len(cache) == 2 and cache.used_bytes <= 5000
    assert cache.best(turn_two, covered=len(INSTRUCTIONS)) is not None
    assert not cache.put([1, 2, 3], 0, bytearray(5000))  # larger than the whole cache


def scheduler_with(cache: PromptCache) -> Scheduler[str]:
    return Scheduler(max_running=4, step_tokens=512, prefill_tokens=256, prompt_cache=cache)


def evaluate_prompt(scheduler: Scheduler[str], work: ScheduledRequest[str]) -> None:
    while work.phase is Phase.PREFILL:
        for each, take in scheduler.plan():
            scheduler.evaluated(each, take)


def test_a_placed_request_starts_from_the_restored_cells_or_the_holder_when_they_do_not_fit() -> None:
    cache = PromptCache(1 << 20)
    scheduler = scheduler_with(cache)
    first = ScheduledRequest(prompt=[*INSTRUCTIONS, *range(3000, 3050)], payload="other")
    scheduler.add(first)
    assert scheduler.next_to_start() is first
    scheduler.place(first)
    evaluate_prompt(scheduler, first)
    saved(cache, [*INSTRUCTIONS, *FACTS, *ANSWER])
    repeat = ScheduledRequest(prompt=[*INSTRUCTIONS, *FACTS, 9], payload="repeat")
    scheduler.add(repeat)
    assert scheduler.next_to_start() is repeat
    placement = scheduler.place(repeat)
    assert placement.shared == len(INSTRUCTIONS)
    assert placement.restore is not None and len(repeat.cached) == len(INSTRUCTIONS) + len(FACTS)
    assert repeat.pending == [9]
    scheduler.restore_failed(placement)
    assert len(repeat.cached) == len(INSTRUCTIONS) and repeat.pending == [*FACTS, 9]


def test_a_finished_request_keeps_its_prompt_from_the_instructions_on_not_its_answer() -> None:
    cache = PromptCache(1 << 20)
    scheduler = scheduler_with(cache)
    for tail in (range(3000, 3050), FACTS):
        work = ScheduledRequest(prompt=[*INSTRUCTIONS, *tail], payload="")
        scheduler.add(work)
        assert scheduler.next_to_start() is work
        scheduler.place(work)
        evaluate_prompt(scheduler, work)
    work.pending = list(ANSWER)
    for each, take in scheduler.plan():
        scheduler.evaluated(each, take)
    # The holder keeps this very prompt; the instructions are what the prompts before shared.
    assert scheduler.cells_worth_keeping(work) == (len(INSTRUCTIONS), len(INSTRUCTIONS) + len(FACTS))
    assert scheduler_with(PromptCache(0)).cells_worth_keeping(ScheduledRequest(prompt=[], payload="")) is None


def start_evaluated(scheduler: Scheduler[str], count: int) -> list[ScheduledRequest[str]]:
    """``count`` requests, each with its own facts, started and their prompts evaluated."""
    works = [
        ScheduledRequest(prompt=[*INSTRUCTIONS, *range(3000 + 100 * i, 3050 + 100 * i)], payload=str(i))
        for i in range(count)
    ]
    for work in works:
        scheduler.add(work)
        assert scheduler.next_to_start() is work
        scheduler.place(work)
        evaluate_prompt(scheduler, work)
    return works


def test_a_preempted_request_keeps_its_cells_and_restores_them_when_it_starts_again() -> None:
    cache = PromptCache(1 << 20)
    scheduler = scheduler_with(cache)
    works = start_evaluated(scheduler, 2)
    youngest = works[-1]
    youngest.pending = [7]
    while not isinstance(action := scheduler.cache_full(), Preempt):  # the holder goes first
        pass
    assert action.request is youngest and action.keep is not None
    start, tokens = action.keep
    assert start == 0 and tokens == youngest.pending[:-1]  # the holder is gone: all of its cells
    saved(cache, tokens, start)
    scheduler.release(works[0])  # room again
    assert scheduler.next_to_start() is youngest
    placement = scheduler.place(youngest)
    assert placement.restore is not None and youngest.pending == [7]


def test_a_preempted_request_whose_cells_find_no_room_waits_for_more_rather_than_evaluating_again() -> None:
    cache = PromptCache(1 << 20)
    scheduler = scheduler_with(cache)
    works = start_evaluated(scheduler, 3)
    while not isinstance(action := scheduler.cache_full(), Preempt):
        pass
    assert action.keep is not None
    saved(cache, action.keep[1], action.keep[0])
    scheduler.release(works[0])
    placement = scheduler.place(scheduler.next_to_start() or works[2])
    assert placement.restore is not None
    assert scheduler.restore_failed(placement)  # works[1] still runs: wait for it
    assert works[2].phase is Phase.PREEMPTED and works[2].seq_id == -1 and scheduler.next_to_start() is None
    scheduler.release(works[1])
    placement = scheduler.place(scheduler.next_to_start() or works[2])
    assert not scheduler.restore_failed(placement)  # alone: evaluated again
    assert len(placement.request.cached) == placement.shared and placement.request.phase is Phase.PREFILL


def test_packed_token_lists_share_what_the_schedulers_common_prefix_counts() -> None:
    lists = [[], [1], [1, 2, 3], [1, 2, 4], [1, 2, 3, 4, 5], [9, 2, 3], list(range(1000)), [*range(999), 7]]
    for a in lists:
        for b in lists:
            assert shared_length(packed(a), packed(b)) == common_prefix(a, b), (a[:5], b[:5])
