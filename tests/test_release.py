"""Releases (`lstmmt export`): weights only, verified on load, and translating exactly as the run does."""

import json
import os
import shutil
from pathlib import Path

import pytest

from lstmmt import Translator
from lstmmt.release import open_release
from tests.helpers import Server, invoke

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)

LINES = ["twenty-one", "half past seven", "on Monday the third of May", "", "forty-two", "a quarter to three"]
SETTINGS = ["--device", "cpu", "--precision", "fp32", "--beam", "5"]


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory) -> Path:
    """A copy of the shared tiny run with a stored test score and a shortlist."""
    copy = tmp_path_factory.mktemp("release-run") / "run"
    shutil.copytree(tiny_run, copy)
    for args in (["evaluate", copy, "--split", "test", "--beam", "1", "--device", "cpu"], ["shortlist", copy]):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
    return copy


@pytest.fixture(scope="module")
def release(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("release") / "en-de"
    result = invoke("export", run, "-o", out, "--license", "CC-BY-4.0", "--description", "A tiny test model.")
    assert result.exit_code == 0, result.output
    return out


def translate(source: Path, tmp_path: Path, *options: str) -> bytes:
    src = tmp_path / "in.txt"
    src.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}.txt"
    result = invoke("translate", source, "-i", src, "-o", out, *SETTINGS, *options)
    assert result.exit_code == 0, result.output
    return out.read_bytes()


def test_release_translates_byte_identically_to_its_run(run, release, tmp_path):
    assert translate(release, tmp_path) == translate(run, tmp_path)
    assert translate(release, tmp_path, "--n-best", "3") == translate(run, tmp_path, "--n-best", "3")


def test_translator_load_of_a_release_equals_the_run(run, release):
    ours = Translator.load(release, device="cpu", beam_size=5, precision="fp32").translate(LINES)
    theirs = Translator.load(run, device="cpu", beam_size=5, precision="fp32").translate(LINES)
    assert [t.n_best for t in ours] == [t.n_best for t in theirs]


def test_release_holds_weights_only_and_is_smaller_than_best_pt(run, release):
    files = {p.relative_to(release).as_posix() for p in release.rglob("*") if p.is_file()}
    assert files == {"manifest.json", "README.md", "config.yaml", "model.safetensors", "shortlist.npz",
                     "tokenizer/spm.model", "tokenizer/spm.vocab"}
    # best.pt also holds Adam's two moments per weight; the tiny model's tokenizer outweighs its weights
    assert (release / "model.safetensors").stat().st_size < (run / "checkpoints" / "best.pt").stat().st_size / 2
    assert (release / "tokenizer" / "spm.model").read_bytes() == (run / "tokenizer" / "spm.model").read_bytes()
    manifest = json.loads((release / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["source_lang"] == "en" and manifest["parameters"] > 0
    umask = os.umask(0)
    os.umask(umask)
    for name in files:  # readable as any file the user writes (a server may run as another user)
        assert (release / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert set(manifest["files"]) == files - {"manifest.json"}


def test_info_describes_a_release_folder_or_archive(release, tmp_path):
    archive = tmp_path / "en-de.tar.gz"
    shutil.make_archive(str(archive).removesuffix(".tar.gz"), "gztar", release.parent, release.name)
    manifest = json.loads((release / "manifest.json").read_text())
    for path in (release, archive):
        result = invoke("info", path)
        assert result.exit_code == 0, result.output
        text = " ".join(result.output.split())
        assert f"{path}: release, en -> de" in text and f"{manifest['parameters']:,} (fp32)" in text
        assert f"at step {manifest['checkpoint']['step']}" in text and "decode: beam" in text


def test_model_card_names_languages_data_hashes_and_scores(run, release):
    card = (release / "README.md").read_text(encoding="utf-8")
    meta = json.loads((run / "data" / "meta.json").read_text())
    score = json.loads((run / "scores" / "split-test.best.beam1.json").read_text())  # the fixture's --beam 1
    assert "en -> de" in card and "CC-BY-4.0" in card and "A tiny test model." in card
    for split in ("train", "valid", "test"):
        for file in meta["sources"][split]["files"]:
            assert file["sha256"][:16] in card
    assert score["signatures"]["bleu"] in card and f"{score['bleu']:.2f}" in card


@pytest.mark.parametrize("damage", ["flip a weight byte", "delete the tokenizer", "newer format",
                                    "unlist the altered weights"])
def test_damaged_release_is_one_line_naming_the_file(release, tmp_path, damage):
    copy = tmp_path / "copy"
    shutil.copytree(release, copy)
    if damage == "flip a weight byte":
        data = bytearray((copy / "model.safetensors").read_bytes())
        data[-5] ^= 0x40
        (copy / "model.safetensors").write_bytes(bytes(data))
        named = "model.safetensors"
    elif damage == "delete the tokenizer":
        (copy / "tokenizer" / "spm.model").unlink()
        named = "spm.model"
    elif damage == "newer format":
        manifest = json.loads((copy / "manifest.json").read_text())
        (copy / "manifest.json").write_text(json.dumps(manifest | {"format_version": 99}))
        named = "manifest.json"
    else:  # the weights changed and taken out of the manifest, so that no hash is checked
        manifest = json.loads((copy / "manifest.json").read_text())
        del manifest["files"]["model.safetensors"]
        (copy / "manifest.json").write_text(json.dumps(manifest))
        (copy / "model.safetensors").write_bytes((copy / "model.safetensors").read_bytes()[:-1] + b" ")
        named = "model.safetensors"
    result = invoke("translate", copy, "-i", "-", *SETTINGS, input="seven\n")
    assert result.exit_code == 1
    assert named in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize("options", [["--checkpoint", "averaged"], ["--dtype", "bf16"]])
def test_averaged_and_bf16_releases_load_and_translate(run, tmp_path, options):
    if options[1] == "averaged":
        result = invoke("average", run, "--last", "1", "--no-check")
        assert result.exit_code == 0, result.output
    out = tmp_path / "rel.tar.gz"
    result = invoke("export", run, "-o", out, *options)
    assert result.exit_code == 0, result.output
    assert open_release(out).manifest["dtype"] == ("bf16" if "bf16" in options else "fp32")
    lines = Translator.load(out, device="cpu", beam_size=2).translate(LINES)
    assert len(lines) == len(LINES) and lines[3].text == ""


def test_tar_gz_release_translates_like_the_folder(release, tmp_path):
    archive = tmp_path / "model.tar.gz"
    shutil.make_archive(str(archive).removesuffix(".tar.gz"), "gztar", release.parent, release.name)
    assert translate(archive, tmp_path) == translate(release, tmp_path)


def test_export_refuses_a_non_empty_folder_and_leaves_it(run, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = invoke("export", run, "-o", out)
    assert result.exit_code == 1 and "already exists" in result.output
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    result = invoke("export", run, "-o", run / "checkpoints/release")
    assert result.exit_code == 1 and "write the release elsewhere" in result.output
    assert not (run / "checkpoints/release").exists()


def test_serve_of_a_release_answers_the_libretranslate_client(run, release):
    pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install -e '.[dev]')")
    from libretranslatepy import LibreTranslateAPI

    expected = Translator.load(run, device="cpu", precision="fp32").translate(LINES[:3])
    server = Server(release)
    try:
        client = LibreTranslateAPI(server.url)
        assert client.languages()[0] == {"code": "en", "name": "English", "targets": ["de"]}
        assert [client.translate(line, "en", "de") for line in LINES[:3]] == [t.text for t in expected]
    finally:
        server.stop()
