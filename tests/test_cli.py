"""The whole pipeline through the CLI on the toy corpus: it must learn, and misuse must read well."""

import json
from pathlib import Path

import pytest

from tests.helpers import invoke, preprocess_toy, write_corpus

SMALL_MODEL = [
    "--set", "tokenizer.vocab_size=300",
    "--set", "model.embed_size=96", "--set", "model.hidden_size=192",
    "--set", "model.encoder_layers=1", "--set", "model.dropout=0.1",
    "--set", "train.batch_tokens=2500", "--set", "train.lr=0.004", "--set", "train.warmup_steps=50",
    "--set", "train.lr_schedule=inverse_sqrt", "--set", "train.valid_every=150", "--set", "train.log_every=50",
    "--set", "data.max_ratio=10",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run = preprocess_toy(tmp_path_factory.mktemp("pipeline"), 8000, SMALL_MODEL, test=True)
    result = invoke("train", run, "--max-steps", "900", "--set", "train.seed=3")  # ~60 s on 2 idle cores
    assert result.exit_code == 0, result.output
    return run


@pytest.mark.slow
def test_pipeline_learns_held_out_sentences(trained_run):
    result = invoke("evaluate", trained_run, "--split", "test", "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["bleu"] > 60, scores
    assert scores["signatures"]["bleu"].startswith("nrefs:1|case:mixed")
    assert (trained_run / "scores/split-test.json").exists() and (trained_run / "translations/test.hyp").exists()
    metrics = [json.loads(line) for line in (trained_run / "logs/metrics.jsonl").read_text().splitlines()]
    assert any(m["event"] == "valid" for m in metrics) and any(m["event"] == "train" for m in metrics)


@pytest.mark.slow
def test_a_trained_model_still_translates_the_toy_task_in_int8_and_over_a_shortlist(trained_run):
    """A model that learnt the toy task (BLEU > 60 in test_cli.py) keeps most of its test BLEU."""
    import sacrebleu

    from lstmmt import Translator

    assert invoke("shortlist", trained_run).exit_code == 0
    sources = (trained_run / "data/test.src.txt").read_text(encoding="utf-8").splitlines()
    references = (trained_run / "data/test.tgt.txt").read_text(encoding="utf-8").splitlines()
    bleu = {}
    for name, options in {"fp32": {}, "int8": {"quantize": "int8"}, "shortlist": {"shortlist": True},
                          "both": {"quantize": "int8", "shortlist": True}}.items():
        translator = Translator.load(trained_run, device="cpu", beam_size=3, **options)
        bleu[name] = sacrebleu.corpus_bleu([t.text for t in translator.translate(sources)], [references]).score
    assert bleu["fp32"] > 60, bleu
    assert all(score > bleu["fp32"] - 5 for score in bleu.values()), bleu


@pytest.mark.slow
def test_translate_keeps_line_count_and_order(trained_run, tmp_path):
    lines = ["twenty-one", "", "on Monday", "   ", "", "half past seven", "\t"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for beam in ("1", "4"):
        out = tmp_path / f"out{beam}.txt"
        result = invoke("translate", trained_run, "-i", tmp_path / "in.txt", "-o", out, "--beam", beam)
        assert result.exit_code == 0, result.output
        translated = out.read_text(encoding="utf-8").split("\n")[:-1]
        assert len(translated) == len(lines)
        assert [t == "" for t in translated] == [line.strip() == "" for line in lines]
        assert translated[0] == "einundzwanzig" and translated[2] == "am Montag"


@pytest.mark.slow
def test_translate_as_a_filter_with_n_best(trained_run):
    result = invoke("translate", trained_run, "--beam", "3", "--n-best", "3", input="on Monday\n")
    assert result.exit_code == 0, result.output
    rows = [row.split(" ||| ") for row in result.stdout.splitlines()]
    assert len(rows) == 3 and all(row[0] == "0" for row in rows)
    scores = [float(row[2]) for row in rows]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.slow
def test_average_and_info(trained_run):
    result = invoke("average", trained_run, "--last", "2")
    assert result.exit_code == 0, result.output
    assert (trained_run / "checkpoints/averaged.pt").exists()
    result = invoke("translate", trained_run, "--checkpoint", "averaged")
    assert result.exit_code == 0
    result = invoke("info", trained_run)
    assert result.exit_code == 0 and "best BLEU" in result.stdout
    result = invoke("plot", trained_run)
    assert result.exit_code == 0, result.output
    assert (trained_run / "logs/learning_curve.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "{tmp}/nothing"], "run `lstmmt preprocess"),
        (["translate", "{tmp}/nothing"], "run `lstmmt preprocess"),
        (["preprocess", "{tmp}/run", "--src-lang", "en", "--tgt-lang", "de", "--train", "{tmp}/missing"], "missing"),
        (["evaluate", "{tmp}/run"], "--hyp FILE --ref FILE"),
        (["train", "{tmp}/nothing", "--set", "model.size=3"], "run `lstmmt preprocess"),
    ],
)
def test_user_mistakes_give_one_clear_line(tmp_path, args, message):
    result = invoke(*[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_steps_out_of_order_name_the_step_to_run(tmp_path):
    write_corpus(tmp_path / "corpus", 300, 20, 20)
    run = tmp_path / "run"
    assert invoke("preprocess", run, "--src-lang", "en", "--tgt-lang", "de", "--train", tmp_path / "corpus/train",
                  "--set", "tokenizer.vocab_size=100").exit_code == 0
    result = invoke("translate", run)
    assert result.exit_code == 1 and f"run `lstmmt train {run}` first" in result.output
    result = invoke("train", run, "--set", "model.hidden_size=33")
    assert result.exit_code == 1 and "must be even" in result.output


@pytest.mark.slow
def test_an_average_that_hurts_keeps_best_weights(trained_run, tmp_path):
    """Two checkpoints whose mean is a broken model (the best one and its negation): the
    recipe's `average` step must keep best.pt's weights, and say so."""
    import shutil

    import torch

    from lstmmt import checkpoint

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    best = checkpoint.load(run / "checkpoints/best.pt")
    for old in run.glob("checkpoints/step-*.pt"):
        old.unlink()
    checkpoint.save(run / "checkpoints/step-1.pt", best)
    checkpoint.save(run / "checkpoints/step-2.pt", dict(best, step=2, model={k: -v for k, v in best["model"].items()}))
    result = invoke("average", run, "--last", "2")
    assert result.exit_code == 0, result.output
    assert "below best.pt" in result.output and "holds best.pt's weights" in result.output
    kept = checkpoint.load(run / "checkpoints/averaged.pt")["model"]
    assert all(torch.equal(kept[k], best["model"][k]) for k in kept)
    (run / "checkpoints/step-2.pt").unlink()
    result = invoke("average", run, "--last", "1")  # the best model alone: no worse, so the average stays
    assert result.exit_code == 0 and "Averaged 1 checkpoints" in result.output, result.output
