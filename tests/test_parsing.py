from auto_evol.algorithm.parsing import final_instruction, optimized_method, same_instruction

E0_REPLY = """Step 1 #Methods List#:
- add a constraint on time
- ask for the answer in cents
Step 2 #Plan#:
Use both.
Step 3 #Rewritten Instruction#:
Tom buys 3 apples at $2 each within 10 minutes. How much does he pay, in cents?
Step 4 #Finally Rewritten Instruction#:
Tom buys 3 apples at $2 each and 2 pears at $1 each. How much does he pay in cents?
"""


def test_reads_the_final_instruction_of_a_well_formed_reply():
    assert final_instruction(E0_REPLY) == \
        "Tom buys 3 apples at $2 each and 2 pears at $1 each. How much does he pay in cents?"


def test_marker_in_bold_odd_case_and_spacing_on_its_own_line():
    reply = "**Step 4 #finally  REWRITTEN instruction#:**\n\n  Solve x + 2 = 5 for x, then double it.  \n"
    assert final_instruction(reply) == "Solve x + 2 = 5 for x, then double it."


def test_marker_without_step_header_and_answer_on_the_same_line():
    assert final_instruction("#Finally Rewritten Instruction#: Count the primes below 50.") == \
        "Count the primes below 50."


def test_markdown_heading_marker_and_bold_answer():
    reply = "### Finally Rewritten Instruction\n**List three causes of inflation and rank them.**"
    assert final_instruction(reply) == "List three causes of inflation and rank them."


def test_format_echoed_back_empty_before_the_real_answer():
    reply = ("Step 1 #Methods List#:\nStep 2 #Plan#:\nStep 3 #Rewritten Instruction#:\n"
             "Step 4 #Finally Rewritten Instruction#:\n\n" + E0_REPLY)
    assert final_instruction(reply).startswith("Tom buys 3 apples at $2 each and 2 pears")


def test_instruction_that_mentions_the_marker_words_keeps_them():
    inner = ("Explain why a prompt's #Finally Rewritten Instruction# section should hold no explanation, "
             "and give the rewritten instruction count.")
    reply = f"Step 4 #Finally Rewritten Instruction#:\n{inner}"
    assert final_instruction(reply) == inner


def test_multi_line_instruction_with_its_own_step_and_plan_lines_is_not_cut():
    inner = "Plan a 3-day trip.\nStep 1: pick a city under $500.\nPlan: list hotels by price."
    assert final_instruction(f"#Finally Rewritten Instruction#:\n{inner}") == inner


def test_text_after_the_final_section_is_cut_at_the_next_header():
    reply = "Step 4 #Finally Rewritten Instruction#:\nSort the list in O(n log n).\nStep 5 #Explanation#:\nI added a bound."
    assert final_instruction(reply) == "Sort the list in O(n log n)."


def test_falls_back_to_step_three_when_step_four_is_missing():
    reply = "Step 1 #Methods List#: a\nStep 3 #Rewritten Instruction#:\nAdd 2 and 3, then square the sum."
    assert final_instruction(reply) == "Add 2 and 3, then square the sum."


def test_no_final_instruction_is_none():
    assert final_instruction("I think the instruction is already complex enough.") is None
    assert final_instruction("Step 4 #Finally Rewritten Instruction#:\n   \n") is None
    assert final_instruction("") is None


def test_optimized_method_after_header_keeps_braces():
    reply = ("The feedback says the method loses numbers.\n\n**Optimized Method:**\n"
             "Rewrite the problem; keep every number. Reply as JSON {\"steps\": []} then\n"
             "#Finally Rewritten Instruction#:\n\n#Instruction#:\n{instruction}\n")
    text = optimized_method(reply)
    assert text.startswith("Rewrite the problem; keep every number.")
    assert '{"steps": []}' in text and text.count("{instruction}") == 1


def test_optimized_method_in_a_fenced_block_and_last_header_wins():
    reply = ("I will now write the Optimized Method.\nOptimized Method: see below\n"
             "## Optimized Method\n```text\nHarder, please: {instruction}\n```\nThat is all.")
    assert optimized_method(reply) == "Harder, please: {instruction}\n"


def test_optimized_method_without_a_placeholder_is_a_method_the_instruction_is_appended_to():
    from auto_evol.algorithm.method import Method

    reply = "Optimized Method:\nMake it harder.\n\n#Instruction#:\n"
    text = optimized_method(reply)
    assert text == "Make it harder.\n\n#Instruction#:\n"
    assert Method("m", text).render("Add 2 and 3.") == "Make it harder.\n\n#Instruction#:\nAdd 2 and 3."
    plain = optimized_method("Optimized Method:\nMake it harder.")
    assert Method("m", plain).render("Add 2 and 3.") == "Make it harder.\n\n#Instruction#:\nAdd 2 and 3."


def test_the_papers_fenced_block_loses_its_closing_fence():
    reply = "Some analysis.\n```Optimized Method\nStep 1: list ways.\n#Instruction#:\n```\nDone."
    assert optimized_method(reply) == "Step 1: list ways.\n#Instruction#:\n"
    assert optimized_method("```Optimized Method\nMake it harder.\n```") == "Make it harder.\n"
    assert optimized_method("Optimized Method:\nMake it harder.\n```") == "Make it harder.\n"


def test_unreadable_optimizer_replies():
    assert optimized_method("The improved method is to add a line.") is None
    assert optimized_method("Optimized Method:\n   \n") is None
    assert optimized_method("Optimized Method:\n{instruction}") is None  # no prompt around it
    assert optimized_method("") is None


def test_same_instruction_ignores_case_spacing_and_punctuation():
    assert same_instruction("What is 2 + 3?", "  what is 2 3 ")
    assert not same_instruction("What is 2 + 3?", "What is 2 + 4?")


def test_a_method_that_ends_by_opening_the_final_instruction_accepts_a_bare_reply():
    from auto_evol.algorithm import method
    from auto_evol.algorithm.parsing import ends_with_final_header, evolved_instruction

    assert ends_with_final_header(method.load("weak").text)
    assert ends_with_final_header(method.load("evol-instruct-constraints").text)
    assert not ends_with_final_header(method.load("e0").text)
    assert evolved_instruction("Rewrite: Sum 2 and 3, then double it.", bare_allowed=True) == \
        "Sum 2 and 3, then double it."
    assert evolved_instruction("Sum 2 and 3, then double it.", bare_allowed=False) is None
    assert evolved_instruction("#Finally Rewritten Instruction#: Add 4.", bare_allowed=True) == "Add 4."
    assert evolved_instruction("Step 1 #Methods List#: a, b", bare_allowed=True) is None
