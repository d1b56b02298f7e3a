"""Fidelity to the papers (issue 10): the points where auto-evol must behave as Auto Evol-Instruct and
Evol-Instruct do, each checked on what actually reaches the LLM (scripted behind DSPy).

Every test says, in a comment, what undoing the feature it guards looks like.
"""
from __future__ import annotations

import importlib
import json
import re
import threading

import dspy
import pytest

from auto_evol.algorithm import candidate as candidate_mod
from auto_evol import evolve as evolve_mod
from auto_evol.algorithm import feedback as feedback_mod
from auto_evol.algorithm import rounds as rounds_mod
from auto_evol.llm import client as llm_mod
from auto_evol.llm import backends
from auto_evol.algorithm import selection, trajectory
from auto_evol.storage.data import Item
from auto_evol.algorithm.evaluation import DevResult, Evaluation
from auto_evol.evolve import EvolveOptions
from auto_evol.algorithm.failure import Failure
from auto_evol.algorithm.feedback import Feedback
from auto_evol.algorithm.method import Method
from conftest import AsyncScripted, ScriptedEngine, scripted_llm
from fake_openai import evolve_world, world

optimize_mod = importlib.import_module("auto_evol.optimize")   # the package exports a function of that name

INIT = "Rewrite (level 0) this: {instruction}\n"
ANALYSIS_REPLY = "Case 2 failed: its stage 1 could not be read. Case 3 asked back instead of evolving."


# --- helpers ---------------------------------------------------------------------------------------

class RecordingEngine(ScriptedEngine):
    """A scripted engine that also keeps the sampling settings of every request it really received."""

    def __init__(self, script) -> None:
        super().__init__(script)
        self.configs: list[tuple[str, float | None, float | None, int | None]] = []
        self._lock = threading.Lock()

    def complete(self, request):
        c = request.config
        with self._lock:
            self.configs.append((request.messages[-1].text or "", c.temperature, c.top_p, c.seed))
        return super().complete(request)


def recording_llm(script, settings: llm_mod.RoleSettings, *, name: str, cache: bool = False,
                  seeded: bool = False) -> tuple[llm_mod.Llm, RecordingEngine]:
    """Like conftest.scripted_llm, but with the role's full RoleSettings and a recording engine;
    ``seeded`` makes the Llm send its rollout id as the sampling seed (as the GGUF / HTTP engines do)."""
    engine = RecordingEngine(script)
    lm = dspy.LM(f"test/{name}", engine=engine, async_engine=AsyncScripted(engine), cache=cache, num_retries=0)
    return llm_mod.Llm(settings, lm, seeded=seeded), engine


@pytest.fixture
def own_cache():
    """Tests that switch DSPy's response cache on give the process its earlier cache back afterwards."""
    saved = vars(dspy).get("cache")
    yield
    with dspy._cache_lock:
        if saved is None:
            vars(dspy).pop("cache", None)
        else:
            dspy.cache = saved


def optimizer_script(prompt: str) -> str:
    """Analysis: a fixed, recognisable feedback. Optimization: the current level plus one."""
    if prompt.startswith("You are reviewing"):
        return ANALYSIS_REPLY
    assert prompt.startswith("You improve"), prompt[:80]
    level = int(re.search(r"level (\d+)", prompt.split("=== End of current method ===")[0]).group(1))
    return f"Optimized Method:\nRewrite (level {level + 1}) this: {{instruction}}\n"


def questions(path, n: int):
    path.write_text("\n".join(json.dumps({"id": i, "prompt": f"Question number {i}?"}) for i in range(n)) + "\n")
    return path


def run_optimize(workdir, *, optimizer=None, evol=None, n=40, **options):
    data = questions(workdir / "questions.jsonl", n)
    (workdir / "init.md").write_text(INIT)
    evol_engine = None
    if evol is None:
        evol, evol_engine = scripted_llm(world, name="evol")
    opt_engine = None
    if optimizer is None:
        optimizer, opt_engine = scripted_llm(optimizer_script, temperature=0.6, name="optimizer")
    settings = dict(data=str(data), init_method=str(workdir / "init.md"), steps=1, candidates=2, batch_size=3,
                    dev_size=8, seed=1, concurrency=1, track=False, cache_dir=None,
                    methods_dir=str(workdir / "methods"))
    settings.update(options)
    return optimize_mod.optimize(evol=evol, optimizer=optimizer, **settings), evol_engine, opt_engine


def optimization_conversations(engine) -> list[list[tuple[str, str]]]:
    return [c for c in engine.conversations if c[-1][1].startswith("You improve")]


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- 1. the optimization continues the analysis conversation ---------------------------------------

def test_the_optimization_request_continues_the_analysis_conversation(workdir):
    # Undone: candidate.propose asks without ``history=feedback.conversation`` (a one-turn request
    # holding only the method), or the history leaves out the trajectory or the analysis reply.
    result, _, engine = run_optimize(workdir, candidates=2)
    record = result.history[0]
    rendered = record.trajectory.render()
    assert "Case 1" in rendered and "Stage 0" in rendered and "Stage 1" in rendered
    conversations = optimization_conversations(engine)
    assert len(conversations) == 2   # one per candidate
    for conversation in conversations:
        roles = [str(role).lower() for role, _ in conversation]
        assert roles == ["user", "assistant", "user"]
        (_, analysis_prompt), (_, analysis), (_, optimization_prompt) = conversation
        # Turn 1: the analysis request, carrying the mini-batch's trajectory case by case, stage by stage.
        assert analysis_prompt == feedback_mod.ANALYSIS_PROMPT.format(trajectory=rendered)
        for number, evo in enumerate(record.trajectory.evolutions, start=1):
            assert f"Case {number}\nStage 0: {evo.item.instruction}" in analysis_prompt
        # Turn 2: the optimizer's own feedback, as its (assistant) turn.
        assert analysis == ANALYSIS_REPLY
        # Turn 3: the current method, to be rewritten.
        assert optimization_prompt == candidate_mod.OPTIMIZATION_PROMPT.format(method=INIT.strip())
    assert all(c.feedback == ANALYSIS_REPLY for c in record.candidates)


# --- 2. the prompts ask for growing complexity and for not harming good cases -----------------------

def test_the_prompts_ask_for_more_complexity_at_every_stage_and_no_harm_to_good_cases(workdir):
    # Undone: the analysis prompt drops 'every stage has to be more complex than the one before it',
    # or the optimization prompt drops 'not lower the complexity increase' / 'do not harm the cases
    # that evolved well' (the paper's two constraints on the rewrite).
    analysis = " ".join(feedback_mod.ANALYSIS_PROMPT.split())
    optimization = " ".join(candidate_mod.OPTIMIZATION_PROMPT.split())
    assert "every stage has to be more complex than the one before it" in analysis
    assert "without making the cases that evolved well any worse" in optimization
    assert "must raise complexity at least as much as the current one does" in optimization
    # ...and those words are what the optimizer is really sent.
    _, _, engine = run_optimize(workdir, candidates=1)
    sent_analysis = [" ".join(p.split()) for p in engine.prompts if p.startswith("You are reviewing")]
    sent_optimization = [" ".join(p.split()) for p in engine.prompts if p.startswith("You improve")]
    assert sent_analysis and all("more complex than the one before it" in p for p in sent_analysis)
    assert sent_optimization and all("cases that evolved well any worse" in p and
                                     "raise complexity at least as much" in p for p in sent_optimization)


# --- 3. evolve shows the evolver the seed's input ---------------------------------------------------

def test_evolve_shows_the_evolver_the_seeds_input_and_the_kept_record_carries_it(tmp_path):
    # Undone: _round renders only row['instruction'] for the evolver (the input is dropped), or a kept
    # record keeps the seed's input beside an instruction that already carries it, or
    # parent_instruction leaves the input out.
    table = "| a | b |\n| 3 | 5 |"
    data = tmp_path / "seeds.jsonl"
    data.write_text("\n".join(json.dumps({"id": f"s{i}", "instruction": f"Question number {i}?", "input": table})
                              for i in (1, 8)) + "\n")
    model, engine = scripted_llm(evolve_world, name="with-input")
    options = EvolveOptions(data=str(data), out=str(tmp_path / "out.jsonl"), methods=["evol-instruct-constraints"],
                            rounds=1, judge=False, track=False, cache_dir=None, concurrency=2)
    result = evolve_mod.evolve(options, evol=model, answerer=model)
    evolver_prompts = [p for p in engine.prompts if p.startswith("You are making an instruction harder")]
    assert len(evolver_prompts) == 2
    for i in (1, 8):
        prompt = next(p for p in evolver_prompts if f"Question number {i}?" in p)
        assert f"#Instruction#:\nQuestion number {i}?\n\n{table}\n" in prompt
    kept = [r for r in read_jsonl(result.out) if r["round"] == 1]
    assert len(kept) == 2
    for record in kept:
        assert record["input"] == ""
        assert record["parent_instruction"] == f"{record['instruction'].split(chr(10))[0]}\n\n{table}"
        assert table in record["instruction"]   # the evolved instruction kept the input it was shown
    seeds = [r for r in read_jsonl(result.out) if r["round"] == 0]
    assert all(r["input"] == table for r in seeds)


# --- 4. a multi-round trajectory has `rounds` stages ------------------------------------------------

def test_a_trajectory_of_three_rounds_has_stages_0_to_3():
    # Undone: trajectory.evolve ignores ``rounds`` (one evolution only), or evolves stage 0 again each
    # round instead of the stage before.
    def grows(prompt: str) -> str:
        instruction = prompt.split("this: ", 1)[1].strip()
        return f"#Finally Rewritten Instruction#: {instruction} Then explain why."

    model, engine = scripted_llm(grows, name="grows")
    method = Method(name="grow", text="Make harder this: {instruction}\n")
    evo = trajectory.evolve_rounds(model, method, Item("7", "Add 2 and 3."), rounds=3)
    assert evo.stopped is None and len(evo.replies) == 3
    assert evo.stages == ("Add 2 and 3.", "Add 2 and 3. Then explain why.",
                          "Add 2 and 3. Then explain why. Then explain why.",
                          "Add 2 and 3. Then explain why. Then explain why. Then explain why.")
    # Round k is asked about stage k - 1.
    assert [p.split("this: ", 1)[1].strip() for p in engine.prompts] == list(evo.stages[:3])
    rendered = trajectory.Trajectory(method, (evo,)).render()
    assert [line.split(":")[0] for line in rendered.splitlines()] == ["Case 1", "Stage 0", "Stage 1", "Stage 2",
                                                                      "Stage 3"]


# --- 5. a retry is a new sample, not a cache hit -----------------------------------------------------

def evolve_with_cache(tmp_path, *, evol_temperature: float = 0.0):
    """Two rounds over six seeds with DSPy's cache on (memory and disk) and one method, so a retried
    seed's round-2 prompt text is exactly its round-1 prompt text."""
    backends.configure_cache(str(tmp_path / "cache"))
    data = tmp_path / "seeds.jsonl"
    data.write_text("\n".join(json.dumps({"id": f"s{i}", "instruction": f"Question number {i}?", "output": "4"})
                              for i in range(6)) + "\n")
    settings = llm_mod.RoleSettings("test/retry", temperature=evol_temperature)
    model, engine = recording_llm(evolve_world, settings, name=f"retry-{evol_temperature}", cache=True, seeded=True)
    options = EvolveOptions(data=str(data), out=str(tmp_path / "out.jsonl"), methods=["evol-instruct-constraints"],
                            rounds=2, judge=False, track=False, cache_dir=str(tmp_path / "cache"), concurrency=2,
                            evol_temperature=evol_temperature)
    result = evolve_mod.evolve(options, evol=model, answerer=model)
    return result, engine


def evolver_requests(engine, seed_number: int):
    return [c for c in engine.configs if c[0].startswith("You are making an instruction harder")
            and f"#Instruction#:\nQuestion number {seed_number}?\n\n#Finally" in c[0]]


def test_a_failed_seed_is_evolved_again_next_round_as_a_new_sample_past_the_cache(tmp_path, own_cache):
    # Undone: the retry is sent with the round's own temperature 0 (no retry_temperature), so its
    # request is byte-for-byte the round-1 request and DSPy's cache answers it: the engine never sees
    # round 2's attempt and the seed fails again for free, forever.
    result, engine = evolve_with_cache(tmp_path)
    # The cache is really on: ask one greedy prompt twice, the engine sees it once.
    settings = llm_mod.RoleSettings("test/probe", temperature=0.0)
    probe, probe_engine = recording_llm(lambda p: "ok", settings, name="probe", cache=True)
    probe.ask("same prompt")
    probe.ask("same prompt")
    assert len(probe_engine.prompts) == 1
    # s3 (3 % 7 == 3: unreadable) and s5 (unchanged) fail round 1 and go back to the pool.
    round1 = {r["seed_id"]: r for r in read_jsonl(tmp_path / "out.jsonl.work" / "round1.jsonl")}
    round2 = {r["seed_id"]: r for r in read_jsonl(tmp_path / "out.jsonl.work" / "round2.jsonl")}
    for i in (3, 5):
        assert round1[f"s{i}"]["status"] == "rejected" and round2[f"s{i}"]["parent_instruction"] == f"Question number {i}?"
        first, retry = evolver_requests(engine, i)   # both reached the engine: the retry was no cache hit
        assert first[1] == 0.0 and first[3] is None      # round 1: greedy, as the paper evolves
        assert retry[1] == EvolveOptions(data="x").retry_temperature > 0
        assert retry[3] is not None and retry[3] == rounds_mod.rollout(0, f"s{i}", 2)
    # A seed that evolved well is evolved further from its new stage, greedily.
    assert [c[1] for c in evolver_requests(engine, 1)] == [0.0]


def test_every_round_of_a_sampled_evolution_is_its_own_rollout(tmp_path, own_cache):
    # Undone: evolve's rollout id does not depend on the round (e.g. _rollout(seed, seed_id)), so a
    # sampled retry repeats round 1's cache entry and seed.
    _, engine = evolve_with_cache(tmp_path, evol_temperature=0.7)
    first, retry = evolver_requests(engine, 3)
    assert first[1] == retry[1] == 0.7
    assert None not in (first[3], retry[3]) and first[3] != retry[3]
    assert rounds_mod.rollout(0, "s3", 1) != rounds_mod.rollout(0, "s3", 2)


# --- 6. llm_error does not enter the failure rate ----------------------------------------------------

def test_call_errors_are_left_out_of_the_rate_and_counted_beside_it():
    # Undone: rate = failures / len(results) (errors count as passes) or errors counted as failures.
    method = Method(name="m", text="Rewrite: {instruction}\n")
    items = [Item(str(i), f"Question {i}?") for i in range(10)]
    outcomes = [None, None, None, Failure.UNREADABLE_EVOLUTION, Failure.ASKS_BACK, Failure.LLM_ERROR,
                Failure.LLM_ERROR, Failure.LLM_ERROR, None, Failure.UNCHANGED]
    evaluation = Evaluation(method, tuple(DevResult(item, None, None, f) for item, f in zip(items, outcomes)))
    assert evaluation.errors == 3 and evaluation.failures == 3
    assert evaluation.rate == pytest.approx(3 / 7)
    assert evaluation.flags() == [False, False, False, True, True, False, False, False, False, True]
    # Every call failed: nothing judged, rate 1.0, and it cannot beat even a method that failed everything.
    broken = Evaluation(method, tuple(DevResult(item, None, None, Failure.LLM_ERROR) for item in items))
    assert broken.errors == 10 and broken.failures == 0 and broken.rate == 1.0
    assert selection.winner(1.0, [broken.rate]) is None


def test_a_candidate_whose_every_call_errors_is_never_accepted(workdir):
    # Undone: an all-error evaluation gets rate 0/0 -> 0.0 (or failures/len = 0.0) and replaces e0.
    from dspy import lm15

    def evol(prompt: str) -> str:
        if prompt.startswith("Broken"):
            raise lm15.ServerError("boom")
        return world(prompt)

    def optimizer(prompt: str) -> str:
        if prompt.startswith("You are reviewing"):
            return ANALYSIS_REPLY
        return "Optimized Method:\nBroken (level 9) this: {instruction}\n"

    evol_llm, _ = scripted_llm(evol, name="evol-broken")
    opt_llm, _ = scripted_llm(optimizer, temperature=0.6, name="opt-broken")
    result, _, _ = run_optimize(workdir, evol=evol_llm, optimizer=opt_llm, candidates=1)
    record = result.history[0]
    evaluation = record.candidates[0].evaluation
    assert evaluation.errors == 8 and evaluation.failures == 0 and evaluation.rate == 1.0
    assert record.accepted is None and result.best.text == INIT


# --- 7. the paper's fenced 'Optimized Method' block ---------------------------------------------------

def test_a_fenced_optimized_method_block_is_read_without_its_fence_through_propose():
    # Undone: optimized_method keeps the closing ``` (or the opening fence line, or the words after the
    # block) in the method text, or propose falls back to the current method on the paper's fenced reply.
    reply = ("The cases failed because the rewrite was unreadable.\n\n"
             "```Optimized Method\nRewrite (level 2) this: {instruction}\n```\n\n"
             "This version should fix cases 1 and 2.\n")
    model, engine = scripted_llm(lambda p: reply, temperature=0.6, name="fenced")
    current = Method(name="e-prev", text="Rewrite (level 1) this: {instruction}\n")
    feedback = Feedback("You are reviewing ...", "Case 1 failed.")
    made = candidate_mod.propose(model, current, feedback, index=0, rollout=11, name="step1-c1", made_by="test")
    assert made.readable and made.method.text == "Rewrite (level 2) this: {instruction}\n"
    assert "```" not in made.method.text and made.method.parent == "e-prev"
    assert len(engine.conversations[0]) == 3


def test_a_fenced_block_inside_a_structured_optimization_reply_is_read_without_its_fence():
    # Undone: the structured reply is not read as JSON (its raw text, escaped newlines and all, goes to
    # parsing.optimized_method), or the fence inside the field survives into the method.
    field = "```Optimized Method\nRewrite (level 2) this: {instruction}\n```"
    engine = ScriptedEngine(lambda p: json.dumps({"optimized_method": field}))
    lm = dspy.LM("test/fenced-json", engine=engine, async_engine=AsyncScripted(engine), cache=False, num_retries=0)
    model = llm_mod.Llm(llm_mod.RoleSettings("test/fenced-json", temperature=0.6), lm, structured=True)
    current = Method(name="e-prev", text="Rewrite (level 1) this: {instruction}\n")
    made = candidate_mod.propose(model, current, Feedback("You are reviewing ...", "Case 1 failed."), index=0,
                                 rollout=11, name="step1-c1", made_by="test")
    assert engine.formats[0]["name"] == "optimization"
    assert made.readable and made.method.text == "Rewrite (level 2) this: {instruction}\n"


# --- 8. per-role sampling defaults ------------------------------------------------------------------

def test_each_role_samples_as_its_paper_says_and_the_optimizer_request_carries_it(workdir, own_cache):
    # Undone: any default changed (greedy optimizer, sampled evolver, answers not at Evol-Instruct's
    # temperature 1 / top_p 0.9 / 2048 tokens, retries at temperature 0), or Llm._request dropping
    # the role's temperature / top_p from the request it sends, or optimize giving its m candidates
    # one rollout id (the cache then answers candidates 2..m with candidate 1's analysis).
    options = optimize_mod.Options()
    assert options.evol_temperature == 0.0
    assert options.optimizer_temperature == 0.6 and options.optimizer_top_p == 0.95
    assert options.optimizer_settings().temperature == 0.6 and options.optimizer_settings().top_p == 0.95
    assert options.evol_settings().temperature == 0.0
    evolve_options = EvolveOptions(data="seeds.jsonl")
    assert evolve_options.evol_temperature == 0.0
    assert evolve_options.answer_temperature == 1.0 and evolve_options.answer_top_p == 0.9
    assert evolve_options.answer_max_tokens == 2048 and evolve_options.retry_temperature > 0
    answer = evolve_options.answer_settings()
    assert (answer.temperature, answer.top_p, answer.max_tokens) == (1.0, 0.9, 2048)
    assert evolve_options.evol_settings().temperature == 0.0
    # What the optimizer role really sends, with the defaults' settings (DSPy's cache on: the m sampled
    # analyses of one trajectory are m requests, told apart by their rollout ids, not one cache entry).
    backends.configure_cache(None)
    optimizer, opt_engine = recording_llm(optimizer_script, options.optimizer_settings(), name="opt-defaults",
                                          cache=True)
    evol, evol_engine = recording_llm(world, options.evol_settings(), name="evol-defaults")
    run_optimize(workdir, evol=evol, optimizer=optimizer, candidates=2)
    assert len(opt_engine.configs) == 4   # 2 analyses + 2 optimizations, none answered from the cache
    assert {(t, p) for _, t, p, _ in opt_engine.configs} == {(0.6, 0.95)}
    assert {t for _, t, _, _ in evol_engine.configs} == {0.0}


# --- 9. mini-batches walk the pool --------------------------------------------------------------------

def test_consecutive_steps_evolve_distinct_training_items(workdir):
    # Undone: every step draws the same mini-batch (batch ignores ``step``) or samples independently
    # (steps repeat items before the pool is used up), or the trajectory draws from the dev set.
    # 14 rows: 8 held out for dev, a pool of 6, mini-batches of 3: two steps must use the whole pool.
    result, _, _ = run_optimize(workdir, n=14, steps=2, patience=2, candidates=1)
    assert len(result.history) == 2
    first, second = ({e.item.id for e in r.trajectory.evolutions} for r in result.history)
    assert len(first) == len(second) == 3 and not first & second
    dev = {r.item.id for r in result.initial.results}
    assert len(dev) == 8 and not (first | second) & dev and len(first | second | dev) == 14
