"""One-line reports of exceptions."""

import errno
from pathlib import Path

import pytest

from lstmmt.errors import first_line, io_error_message
from lstmmt.rundir import atomic_write


def test_first_line_is_the_first_line_of_the_message_cut_to_the_limit():
    assert first_line(RuntimeError("\n  torn zip archive\n  at offset 7\n")) == "torn zip archive"
    assert first_line(ValueError("x" * 500)) == "x" * 300
    assert first_line(ValueError("abcdef"), 3) == "abc"


def test_first_line_of_an_exception_without_message_is_its_type():
    assert first_line(RuntimeError()) == "RuntimeError"
    assert first_line(OSError("  \n ")) == "OSError"


def test_an_io_error_names_the_file_the_user_knows(tmp_path):
    def disk_full(target: Path) -> None:
        with open(target, "a") as file:  # a failure naming the temporary file, as open() would
            raise OSError(errno.ENOSPC, "No space left on device", file.name)

    with pytest.raises(OSError) as error:
        atomic_write(tmp_path / "out.txt", disk_full)
    assert io_error_message(error.value) == (f"cannot write or read {tmp_path / 'out.txt'}: No space left on device; "
                                             "free some space and run again")
    assert list(tmp_path.iterdir()) == []  # no temporary file left
    copy = OSError(errno.ENOSPC, "No space left on device", "/run/tokenizer/spm.vocab", None, "/out/spm.vocab")
    assert io_error_message(copy).startswith("cannot write or read /out/spm.vocab: ")  # shutil names both
