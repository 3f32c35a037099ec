"""A run whose config.yaml cannot be read, or whose tokenizer no longer fits its checkpoints:
each is one error line (no traceback), and nothing is trained or printed half-way."""

from pathlib import Path

from tests.helpers import TINY_RUN, assert_one_line_error, copy_run, invoke


def test_info_on_a_config_that_cannot_be_read_is_one_line(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    bomb += [f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 10)}]" for level in range(1, 9)]
    (run / "config.yaml").write_text("\n".join(bomb) + "\n")
    assert_one_line_error(invoke("info", run), "config.yaml is not valid YAML", "aliases")
    (run / "config.yaml").write_text("model:\n  1: 3\n")
    assert_one_line_error(invoke("info", run), "config keys must be text")
    (run / "config.yaml").write_bytes(b"model:\n  attention: d\xf6t\n")
    assert_one_line_error(invoke("info", run), "config.yaml is not UTF-8 text")


def test_training_on_after_a_new_vocabulary_names_both_sizes(tiny_run, tmp_path):
    """preprocess --force with another vocabulary size keeps the checkpoints, whose embeddings no
    longer fit: train says so (100 then, 90 now) instead of failing inside load_state_dict."""
    run = copy_run(tiny_run, tmp_path)
    corpus = Path(tiny_run).parent / "corpus"
    redone = invoke("preprocess", run, "--force", "--src-lang", "en", "--tgt-lang", "de", "--train", corpus / "train",
                    "--valid", corpus / "valid", "--test", corpus / "test", *TINY_RUN,
                    "--set", "tokenizer.vocab_size=90")
    assert redone.exit_code == 0, redone.output
    checkpoints = sorted(path.name for path in (run / "checkpoints").iterdir())
    assert_one_line_error(invoke("train", run, "--max-steps", "60"), "trained with a joint vocabulary of 100 pieces",
                          "now has a joint vocabulary of 90 pieces", "--restart")
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == checkpoints
