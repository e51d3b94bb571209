"""``vaelab text`` end to end on a sentence VAE trained here on a tiny corpus, and bad text input.

The corpus is four short sentences, repeated; 240 steps (about 3 s on one thread) teach the model to
reproduce them, so the greedy decode of a training sentence's posterior mean is that sentence (the memorised
corpus test of issue 14, item 7, through the command line).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vaelab.cli import main

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ("the cat sat on the mat .", "a dog ran far away .", "i went to the kitchen .",
          "how are you doing ?")


# A sentence VAE small enough to train here in seconds; the KL weight stays near 0 (a linear warm-up
# far longer than the run), so z keeps what it needs to tell the four sentences apart.
SMOKE_TEXT = """
name = "smoke_text"
[model]
name = "sentence_vae"
embedding_dim = 16
hidden_size = 32
latent_dim = 4
kl_schedule = "linear"
kl_warmup_steps = 100000
[train]
epochs = 60
batch_size = 8
lr = 1e-2
log_every = 50
threads = 1
[eval]
is_samples = 2
"""


pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # tiny models: one thread is faster

@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("text")
    corpus = tmp / "corpus"
    corpus.mkdir()
    (corpus / "train.txt").write_text("\n".join(CORPUS * 8) + "\n")
    (corpus / "valid.txt").write_text("\n".join(CORPUS) + "\n")
    (corpus / "test.txt").write_text("\n".join(CORPUS) + "\n")
    (tmp / "smoke.toml").write_text(SMOKE_TEXT)
    out = tmp / "run"
    args = ["train", str(tmp / "smoke.toml"), "--out", str(out), "--quiet", "--seed", "0", "--no-eval",
            "--device", "cpu", "--set", f"data.name=text:{corpus}"]
    assert main(args) == 0
    return out


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["text", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_reconstruct(text_run, capsys):
    code, out, err = run(capsys, "reconstruct", str(text_run), "i went to the kitchen .", "--device", "cpu")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "input:  i went to the kitchen ."
    assert [x.split(":")[0] for x in lines[1:]] == ["mean", "sample", "sample", "sample"]
    assert lines[1] == "mean:   i went to the kitchen ."  # memorised
    assert run(capsys, "reconstruct", str(text_run), "i went to the kitchen .", "--seed", "4")[1] == out


def test_several_sentences_and_save_into_the_report(text_run, capsys):
    """reconstruct takes several sentences (blocks separated by a blank line); --save writes the
    printed results as the run's text sections (replaced by a later --save) into report.html."""
    from vaelab import sections

    code, out, _ = run(capsys, "reconstruct", str(text_run), "i went to the kitchen .", "how are you doing ?",
                       "--samples", "1", "--save")
    blocks = out.split("\n\n")
    assert code == 0 and len(blocks) == 2 and blocks[1].startswith("input:  how are you doing ?")
    assert run(capsys, "homotopy", str(text_run), "i went to the kitchen .", "how are you doing ?",
               "--steps", "3", "--save")[0] == 0
    by_name = {s.name: s for s in sections.read_sections(text_run)}
    rec, hom = by_name["text_reconstruct"], by_name["text_homotopy"]
    assert rec.labels == ["input", "mean", "sample"] * 2 and rec.texts[0] == "i went to the kitchen ."
    assert hom.labels == ["0.00", "0.50", "1.00"] and "Table 8" in hom.title
    html = (text_run / "report.html").read_text(encoding="utf-8")
    assert "Table 7" in html and "Table 8" in html and "how are you doing ?" in html
    assert "binarization" not in html  # the header names a binarization for image data only
    run(capsys, "reconstruct", str(text_run), "i went to the kitchen .", "--samples", "2", "--save")
    rec = {s.name: s for s in sections.read_sections(text_run)}["text_reconstruct"]
    assert rec.labels == ["input", "mean", "sample", "sample"]  # replaced, not appended


def test_sample_homotopy_impute_are_seeded(text_run, capsys):
    for argv in (["sample", str(text_run), "-n", "5", "--temperature", "0.7"],
                 ["sample", str(text_run), "-n", "3", "--greedy"],
                 ["homotopy", str(text_run), "i went to the kitchen .", "how are you doing ?",
                  "--steps", "5"],
                 ["homotopy", str(text_run)],
                 ["impute", str(text_run), "i went to the _ _"]):
        code, out, err = run(capsys, *argv, "--seed", "2")
        assert code == 0 and err == "" and out, argv
        assert run(capsys, *argv, "--seed", "2")[1] == out, argv
    out = run(capsys, "homotopy", str(text_run), "i went to the kitchen .", "how are you doing ?",
              "--steps", "5")[1].splitlines()
    assert [x.split("  ")[0] for x in out] == ["0.00", "0.25", "0.50", "0.75", "1.00"]
    assert out[0].endswith("  i went to the kitchen .") and out[-1].endswith("  how are you doing ?")
    assert len(run(capsys, "sample", str(text_run), "-n", "5")[1].splitlines()) == 5
    # the memorised sentences complete themselves, whether the blanks are marked or counted
    assert run(capsys, "impute", str(text_run), "i went to the _ _")[1] == "i went to the kitchen .\n"
    assert run(capsys, "impute", str(text_run), "how are you", "--missing", "2")[1] == "how are you doing ?\n"


def test_unknown_and_long_input_warn_in_one_line(text_run, capsys):
    code, out, err = run(capsys, "reconstruct", str(text_run), "i went to the zoo with zebras .")
    assert code == 0 and out.splitlines()[0] == "input:  i went to the <unk> <unk> <unk> ."
    seen = "'i went to the <unk> <unk> <unk> .'"
    assert err == f"warning: 3 unknown word(s) read as <unk> in {seen}: zoo, with, zebras\n"
    long = " ".join(["the cat sat on the mat ."] * 6)  # 42 words, beyond any training sentence
    code, out, err = run(capsys, "reconstruct", str(text_run), long)
    assert code == 0 and out.splitlines()[0] == f"input:  {long}"  # kept whole
    assert len(err.splitlines()) == 1 and "42 words is longer than the model's maximum length" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["reconstruct", "RUN", "  "], "error: the sentence is empty; give at least one word"),
        (["homotopy", "RUN", "only one"], "error: give two sentences for a homotopy, or none; got 1"),
        (["sample", "RUN", "-n", "0"], "error: the number of sentences must be >= 1"),
        (["impute", "RUN", "i _ to the kitchen ."], "error: only missing final words can be imputed"),
    ],
)
def test_bad_input_is_a_one_line_error(text_run, capsys, argv, message):
    code, out, err = run(capsys, *[str(text_run) if a == "RUN" else a for a in argv])
    assert code == 2 and out == "" and err.startswith(message) and err.count("\n") == 1


def test_a_run_of_another_model_is_refused(tmp_path, capsys):
    out = tmp_path / "digits"
    args = ["train", str(ROOT / "configs" / "smoke_vae_digits.toml"), "--out", str(out), "--quiet",
            "--no-eval", "--set", "train.epochs=1", "--set", "data.limit=100",
            "--set", "train.threads=1"]
    assert main(args) == 0
    capsys.readouterr()
    code, _, err = run(capsys, "sample", str(out))
    assert code == 2 and err.count("\n") == 1
    refused = f"error: run {out} holds a 'vae' model on 'digits', not a sentence VAE; give the folder"
    assert err.startswith(refused)


def test_library_results_are_data(text_run):
    import torch

    from vaelab import text_ops

    model = text_ops.load_sentence_model(text_run, torch.device("cpu"))
    imp = text_ops.impute(model, "a dog ran _ _ _", n_samples=4, seed=1)
    scores = [score for _, score in imp.candidates]
    assert imp.filled == imp.candidates[0][0] == "a dog ran far away ."
    assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)  # ELBOs, in nats
    rec = text_ops.reconstruct(model, "how are you doing ?", n_samples=2, seed=1)
    assert (rec.mean, rec.samples) == ("how are you doing ?", ("how are you doing ?",) * 2)
