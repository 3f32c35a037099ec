"""One-line reports of exceptions."""

from lstmmt.errors import first_line


def test_first_line_is_the_first_line_of_the_message_cut_to_the_limit():
    assert first_line(RuntimeError("\n  torn zip archive\n  at offset 7\n")) == "torn zip archive"
    assert first_line(ValueError("x" * 500)) == "x" * 300
    assert first_line(ValueError("abcdef"), 3) == "abc"


def test_first_line_of_an_exception_without_message_is_its_type():
    assert first_line(RuntimeError()) == "RuntimeError"
    assert first_line(OSError("  \n ")) == "OSError"
