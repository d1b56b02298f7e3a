import pytest

from auto_evol.algorithm.failure import Failure, answer_failure


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


def test_elimination_rules():
    from auto_evol.algorithm.failure import elimination_failure, instruction_failure

    assert elimination_failure("Sorry, I cannot help with that.") is Failure.SORRY_SHORT_ANSWER
    long_sorry = "Sorry for the long reply. " + "The total is computed step by step here. " * 12
    assert elimination_failure(long_sorry) is None
    assert elimination_failure("... and, of the it!") is Failure.STOPWORDS_ONLY_ANSWER
    assert elimination_failure("Sure, which numbers?") is Failure.INSUFFICIENT_QUALIFICATION
    assert elimination_failure("The answer is 42.") is None
    assert instruction_failure("In the #Rewritten Prompt#, add a table.") is Failure.COPIES_PROMPT_WORDS
    assert instruction_failure("Add a table of prices and sum them.") is None


@pytest.mark.parametrize("evolved", [
    "In the #Rewritten Prompt#, add a table.",
    "#Given Prompt#: sum the prices.",
    "#Created Prompt#: name three rare birds.",
    "Rewrite the given prompt so that it asks for the total price.",
    "Here is the rewritten prompt: sum the prices and add tax.",
    "The created prompt asks for three rare birds.",
    "#Instruction#: Add 2 and 3.",
    "#instruction# Add 2 and 3.",
    "#Rewritten Instruction#: Add 2 and 3, then square it.",
    "#Finally Rewritten Instruction#: Add 2 and 3, then square it.",
    "#finally rewritten  instruction# Add 2 and 3.",
    "Finally Rewritten Instruction: Add 2 and 3, then square it.",
    "Step 2 #Plan#: add a constraint. Add 2 and 3.",
    "#Methods List#: 1. add a step",
])
def test_copies_of_the_prompts_markers_are_eliminated(evolved):
    from auto_evol.algorithm.failure import instruction_failure

    assert instruction_failure(evolved) is Failure.COPIES_PROMPT_WORDS


@pytest.mark.parametrize("evolved", [
    "Add a table of prices and sum them.",
    "Follow the given instructions to assemble the shelf, and list the tools each step needs.",
    "Compare the original and the rewritten instructions of the manual and list what changed.",
    "Summarise the rewritten instruction set of the RISC-V extension in three bullet points.",
    "Explain why a created instruction sequence in the JIT compiler can break the CPU's branch predictor.",
    "Given instructions from three managers that conflict, decide which to follow and why.",
    "Write a Python script with the comment '# Instruction #1: read the file' at the top.",
    "Tag the post with #planning and #instructions, then count the tags.",
    "Rate the given prompts by clarity.",       # the paper's words only count whole
])
def test_ordinary_english_about_instructions_is_not_a_copy(evolved):
    from auto_evol.algorithm.failure import instruction_failure

    assert instruction_failure(evolved) is None
