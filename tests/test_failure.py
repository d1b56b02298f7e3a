import pytest

from auto_evol.failure import Failure, answer_failure


@pytest.mark.parametrize("answer, expected", [
    ("Understood. Which numbers should I use?", Failure.STAGNANT_COMPLEXITY),
    ("Thank you for the task! Could you clarify the prices?", Failure.STAGNANT_COMPLEXITY),
    ("Sure! How many apples are there?", Failure.INSUFFICIENT_QUALIFICATION),
    ("**Sure**, but what is the rate?", Failure.INSUFFICIENT_QUALIFICATION),
    ("To solve it, please provide the missing price.", Failure.LOSS_OF_KEY_INFORMATION),
    ("What do you mean by 'more'?", Failure.ASKS_BACK),
    ("That is correct. Anything else?", Failure.ACKNOWLEDGES_ONLY),
    ("Great question. Shall I go on?", Failure.ACKNOWLEDGES_ONLY),
    ("I understand. Do you want the steps?", Failure.ACKNOWLEDGES_ONLY),
    ("Is there anything else you need?", Failure.ACKNOWLEDGES_ONLY),
    ("I’m sorry, could you rephrase?", Failure.REFUSES),
    ("As an AI assistant, may I ask which unit?", Failure.REFUSES),
    ("It is not possible to split 7 apples evenly among 2 people.", Failure.NOT_POSSIBLE),
    ("   ", Failure.EMPTY_ANSWER),
])
def test_failure_rules(answer, expected):
    assert answer_failure(answer) is expected


@pytest.mark.parametrize("answer", [
    "Sure. 3 apples at $2 is $6, so he pays 600 cents.",   # opens with 'Sure' but answers
    "What a nice problem: the total is 42.",                # opens with 'What' but does not ask back
    "Whatever the price, is the total 12?",                 # 'Whatever' is not 'What'
    "The total is 12. Did that help?",                      # ends with '?' but opens with an answer
    "Each friend gets 4 tickets.",
])
def test_answers_that_pass(answer):
    assert answer_failure(answer) is None
