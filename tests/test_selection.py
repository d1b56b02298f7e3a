import pytest

from auto_evol.algorithm.selection import should_stop, winner


def test_lowest_rate_wins_and_ties_keep_the_incumbent():
    assert winner(0.5, [0.4, 0.3, 0.6]) == 1
    assert winner(0.3, [0.4, 0.3, 0.6]) is None      # tie with the incumbent: keep it
    assert winner(0.5, [0.3, 0.3]) == 0              # tie between candidates: the first
    assert winner(0.5, []) is None


def test_patience():
    assert not should_stop([True], 1)
    assert should_stop([True, False], 1)
    assert not should_stop([True, False], 2)
    assert should_stop([False, False], 2)
    assert not should_stop([False, True], 2)


def test_halving_rungs_double_until_two_finalists_take_the_full_dev_set():
    from auto_evol.algorithm.selection import halving_rungs

    assert halving_rungs(50, 5) == [6, 12, 50]
    assert halving_rungs(50, 9) == [4, 8, 16, 50]
    assert halving_rungs(50, 2) == [50]
    assert halving_rungs(8, 5) == [4, 8]


def test_halving_matches_the_full_evaluations_winner_with_half_the_judgements():
    import numpy as np

    from auto_evol.algorithm.selection import successive_halving

    agree, judged = 0, []
    for seed in range(300):
        rng = np.random.default_rng(seed)
        true_rates = rng.permutation([0.2, 0.35, 0.5, 0.6, 0.7])    # known failure rates per candidate
        outcomes = rng.random((5, 50)) < true_rates[:, None]
        full_winner = min(range(5), key=lambda c: (outcomes[c].mean(), c))
        calls = []

        def judge(pairs):
            calls.extend(pairs)
            return [outcomes[c, i] for c, i in pairs]

        survivor, failures = successive_halving(5, 50, judge)
        assert failures[survivor] == list(outcomes[survivor])     # the survivor saw every dev item
        agree += survivor == full_winner
        judged.append(len(calls))
    assert agree / 300 >= 0.9
    assert sum(judged) / len(judged) <= 0.5 * 5 * 50


def test_race_nearly_matches_full_evaluation_with_under_half_the_judgements():
    import numpy as np

    from auto_evol.algorithm.selection import race, successive_halving

    agree = {"race": 0, "halving": 0}
    judged = {"race": 0, "halving": 0}
    for seed in range(300):
        rng = np.random.default_rng(seed)
        outcomes = rng.random((5, 50)) < rng.permutation([0.2, 0.35, 0.5, 0.6, 0.7])[:, None]
        full_winner = min(range(5), key=lambda c: (outcomes[c].sum(), c))
        for name, strategy in (("race", race), ("halving", successive_halving)):
            def judge(pairs):
                judged[name] += len(pairs)
                return [outcomes[c, i] for c, i in pairs]

            survivor, failures = strategy(5, 50, judge)
            assert failures[survivor] == list(outcomes[survivor])   # the survivor saw every dev item
            agree[name] += survivor == full_winner
    assert agree["race"] / 300 >= 0.95 and agree["race"] > agree["halving"]
    assert judged["race"] / 300 <= 0.5 * 5 * 50


def test_race_drops_a_clearly_worse_candidate_early_and_follows_close_ones_to_the_end():
    from auto_evol.algorithm.selection import clearly_worse, race

    outcomes = {0: [False] * 50, 1: [True] * 50, 2: [i % 10 == 0 for i in range(50)]}
    seen = {c: 0 for c in outcomes}

    def judge(pairs):
        for c, _ in pairs:
            seen[c] += 1
        return [outcomes[c][i] for c, i in pairs]

    survivor, failures = race(3, 50, judge)
    assert survivor == 0 and seen[1] == 5 and seen[0] == 50    # always failing: out after the first 5
    assert 5 < seen[2] < 50                                      # 10% failing: out once the evidence says so
    assert not clearly_worse([True, False], [False, True]) and clearly_worse([True] * 9, [False] * 9)


def test_the_incumbent_races_too_and_costs_no_call():
    from auto_evol.algorithm.selection import race

    incumbent = [i % 10 == 0 for i in range(50)]                 # fails 10% of the dev items
    outcomes = {0: [i % 2 == 0 for i in range(50)], 1: [False] * 50}   # 50%: cannot beat it; 0%: can
    seen = {c: 0 for c in outcomes}

    def judge(pairs):
        for c, _ in pairs:
            seen[c] += 1
        return [outcomes[c][i] for c, i in pairs]

    # A lone candidate clearly worse than the incumbent leaves early: nothing to race it against but the incumbent.
    survivor, _ = race(1, 50, judge, incumbent=incumbent)
    assert survivor is None and seen[0] < 50
    seen = {c: 0 for c in outcomes}
    survivor, failures = race(2, 50, judge, incumbent=incumbent)
    assert survivor == 1 and failures[1] == outcomes[1] and seen[0] < 50
    # Without the incumbent a lone candidate is judged on every item.
    seen = {c: 0 for c in outcomes}
    assert race(1, 50, judge)[0] == 0 and seen[0] == 50


def test_the_strategy_table_drives_the_check_the_dispatch_and_the_help(monkeypatch):
    """A strategy added to the table alone is accepted, run and listed."""
    from auto_evol.algorithm import selection
    from auto_evol.core.errors import UserError
    from auto_evol.optimize import Options

    assert "full (" in selection.help_text() and "race (" in selection.help_text()
    with pytest.raises(UserError, match="full, halving or race"):
        Options(selection="sometimes").validate()
    called = []

    def first_only(n_candidates, n_items, *, incumbent=None):
        called.append((n_candidates, n_items))
        if not n_candidates:
            return None, []
        return (yield from selection.every_item_steps(1, n_items))

    monkeypatch.setitem(selection.STRATEGIES, "first",
                        selection.Strategy("first", first_only, "the first one", lambda n_items, most: 0))
    Options(selection="first").validate()
    assert "first (the first one)" in selection.help_text() and selection.names().endswith("or first")

    # The loop's dispatch runs it: only the first candidate is judged, so only it may win.
    import asyncio
    import importlib
    from types import SimpleNamespace

    from auto_evol.algorithm.method import Method

    optimize_mod = importlib.import_module("auto_evol.optimize")
    asked = []

    class Dev:   # the step's dev pairs, judged at once
        async def results(self, pairs):
            asked.extend((m.name, i) for m, i in pairs)
            return [SimpleNamespace(failure=None) for _ in pairs]

    run = optimize_mod._Run.__new__(optimize_mod._Run)
    run.split, run.strategy = SimpleNamespace(dev=[1, 2, 3]), selection.STRATEGIES["first"]
    a, b = Method(name="a", text="A {instruction}"), Method(name="b", text="B {instruction}")
    evaluations, finalists = asyncio.run(run._judge_candidates([a, b], Dev(), None))
    assert called == [(2, 3)] and asked == [("a", 0), ("a", 1), ("a", 2)]
    assert finalists == {a.hash} and len(evaluations[b.hash].results) == 0


def test_every_item_judges_all_pairs_in_one_call():
    from auto_evol.algorithm.selection import every_item

    calls = []

    def judge(pairs):
        calls.append(list(pairs))
        return [c == 1 for c, _ in pairs]

    survivor, failures = every_item(3, 4, judge)
    assert len(calls) == 1 and len(calls[0]) == 12
    assert survivor == 0 and failures[1] == [True] * 4 and failures[0] == [False] * 4
    assert every_item(0, 4, judge) == (None, [])


@pytest.mark.parametrize("name", ["full", "halving", "race"])
def test_a_step_with_no_candidate_to_judge_judges_nothing(name):
    """Every optimizer reply unreadable: no distinct candidate, no call, no winner."""
    from auto_evol.algorithm.selection import STRATEGIES

    def judge(pairs):
        raise AssertionError("nothing to judge")

    assert STRATEGIES[name].run(0, 50, judge, incumbent=[False] * 50) == (None, [])
