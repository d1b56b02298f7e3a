import pytest

from auto_evol.algorithm import method
from auto_evol.core.errors import UserError
from auto_evol.algorithm.method import Method


def test_shipped_methods_load_with_one_placeholder():
    for name in ("e0", "weak"):
        m = method.load(name)
        assert m.name == name and m.text.count("{instruction}") == 1
    e0 = method.load("e0")
    assert "#Finally Rewritten Instruction#" in e0.text and "Step 4" in e0.text
    assert "e0" in method.available() and "weak" in method.available()


def test_render_substitutes_only_the_placeholder_and_braces_survive(tmp_path):
    text = 'Answer as JSON {"steps": [{"n": 1}]} and code `f"{x}"`.\n#Instruction#:\n{instruction}\n'
    path = tmp_path / "j.md"
    path.write_text("---\nname: json-method\nparent: e0\nmade_by: test\nnote: kept\n---\n" + text)
    m = method.load(path)
    assert (m.name, m.parent, m.made_by, m.extra) == ("json-method", "e0", "test", {"note": "kept"})
    assert m.text == text
    rendered = m.render("Add {a} and {b}.")
    assert rendered == text.replace("{instruction}", "Add {a} and {b}.")


def test_save_then_load_round_trips(tmp_path):
    m = Method(name="x", text="Harder: {instruction}\n", parent="e0", made_by="test run", extra={"hash": "abc"})
    path = method.save(m, tmp_path)
    assert path == tmp_path / "x.md"
    assert method.load(path) == m
    assert method.free_name("x", tmp_path) == "x-2"
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_method_without_placeholder_gets_the_instruction_appended(tmp_path):
    path = tmp_path / "plain.md"
    path.write_text("---\nname: plain\n---\nMake it harder.\n")
    plain = method.load(path)
    assert plain.render("Add 2 and 3.") == "Make it harder.\n\n#Instruction#:\nAdd 2 and 3."
    slot = Method(name="slot", text="Make it harder.\n#Instruction#:\n")
    assert slot.render("Add 2 and 3.") == "Make it harder.\n#Instruction#:\nAdd 2 and 3."
    # A placeholder, where there is one, decides the place instead.
    placed = Method(name="placed", text="Rewrite {instruction} now.\n#Instruction#:\n")
    assert placed.render("this") == "Rewrite this now.\n#Instruction#:\n"


def test_a_file_with_no_prompt_text_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.md"
    path.write_text("---\nname: bad\n---\n   \n{instruction}\n")
    with pytest.raises(UserError, match=r"bad\.md: not a method: it holds no prompt text"):
        method.load(path)
    with pytest.raises(ValueError):
        Method(name="empty", text="  \n")


def test_unknown_name_and_broken_header(tmp_path):
    with pytest.raises(UserError, match="unknown method 'nope'"):
        method.load("nope")
    path = tmp_path / "h.md"
    path.write_text("---\nname: h\nthis line is not a header\n---\n{instruction}\n")
    with pytest.raises(UserError, match=r"h\.md:3: header line"):
        method.load(path)


def test_the_hash_follows_the_text_only():
    a = Method(name="a", text="Harder: {instruction}")
    assert a.hash == Method(name="b", text="Harder: {instruction}", parent="a").hash
    assert a.hash != Method(name="a", text="Much harder: {instruction}").hash
