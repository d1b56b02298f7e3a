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
