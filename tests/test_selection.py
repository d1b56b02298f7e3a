from auto_evol.selection import should_stop, winner


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
    from auto_evol.selection import halving_rungs

    assert halving_rungs(50, 5) == [6, 12, 50]
    assert halving_rungs(50, 9) == [4, 8, 16, 50]
    assert halving_rungs(50, 2) == [50]
    assert halving_rungs(8, 5) == [4, 8]


def test_halving_matches_the_full_evaluations_winner_with_half_the_judgements():
    import numpy as np

    from auto_evol.selection import successive_halving

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

    from auto_evol.selection import race, successive_halving

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
    from auto_evol.selection import clearly_worse, race

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
    from auto_evol.selection import race

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
