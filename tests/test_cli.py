"""Every CLI subcommand end to end on smoke presets, and bad input as one-line errors."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vaelab.cli import COMMANDS, build_parser, main
from vaelab.sections import read_sections

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke_vae_digits.toml")

# subcommand -> the test(s) below that run it end to end; a new subcommand without one fails
TESTED = {
    "train": "test_train_eval_sample_report",
    "eval": "test_train_eval_sample_report",
    "sample": "test_train_eval_sample_report",
    "report": "test_train_eval_sample_report",
    "demo": "test_demo",
    "encode": "tests/test_pipeline.py",
    "data": "tests/test_data*.py",
    "kl": "tests/test_vi_*.py",
    "lda": "tests/test_vi_*.py",
    "ising": "tests/test_vi_*.py",
    "reproduce": "tests/test_reproduce*.py",
    "text": "tests/test_text_cli.py",
    "vq": "tests/test_vq_pipeline.py",
    "compare": "tests/test_compare_and_mi.py",
}


def test_every_subcommand_has_an_end_to_end_test():
    build_parser()
    assert set(COMMANDS) <= set(TESTED), f"untested subcommands: {set(COMMANDS) - set(TESTED)}"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "smoke"
    assert main(["train", SMOKE, "--out", str(out), "--quiet", "--seed", "3"]) == 0
    return out


def test_train_eval_sample_report(smoke_run, capsys):
    out = smoke_run
    for name in ("run.json", "config.json", "command.txt", "metrics.jsonl", "eval.json", "sections.json",
                 "report.html"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"train", "valid"}
    ev = json.loads((out / "eval.json").read_text())
    assert ev["log_px"] < 0 and ev["is_samples"] == 20 and ev["log_px"] >= ev["elbo"] - 1.0
    assert ev["n_dims"] == 64 and ev["bits_per_dim"] == pytest.approx(-ev["log_px"] / (64 * np.log(2)))
    assert main(["eval", str(out), "--is-samples", "50", "--quiet"]) == 0
    assert "IS log p(x)" in capsys.readouterr().out
    assert json.loads((out / "eval.json").read_text())["is_samples"] == 50
    assert main(["sample", str(out), "-n", "4"]) == 0  # the samples section only: no PNG unless asked
    assert {s.name: s for s in read_sections(out)}["samples"].images.shape == (4, 1, 8, 8)
    assert not (out / "figures" / "samples.png").exists()
    assert main(["sample", str(out), "-n", "9", "--png", str(out / "s.png")]) == 0
    assert (out / "s.png").read_bytes()[:4] == b"\x89PNG"
    samples = {s.name: s for s in read_sections(out)}["samples"]
    assert samples.images.shape == (9, 1, 8, 8)
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert html.count("<img") >= 5


def test_same_seed_same_numbers(smoke_run, tmp_path):
    again = tmp_path / "again"
    assert main(["train", SMOKE, "--out", str(again), "--quiet", "--seed", "3", "--no-eval"]) == 0
    a = [json.loads(x) for x in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (again / "metrics.jsonl").read_text().splitlines()]
    strip = [{k: v for k, v in r.items() if k != "time"} for r in a]
    assert strip == [{k: v for k, v in r.items() if k != "time"} for r in b]


def test_eval_seed_sets_the_evaluation_seed(smoke_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)

    def log_px(seed):
        assert main(["eval", str(run), "--seed", str(seed), "--max-examples", "40", "--quiet"]) == 0
        return json.loads((run / "eval.json").read_text())["log_px"]

    a = log_px(1)
    assert log_px(1) == a
    assert log_px(2) != a


def test_resume_through_the_cli(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", SMOKE, "--out", str(out), "--quiet", "--no-eval", "--set", "train.epochs=1"]) == 0
    # a second plain train into the same folder must not clobber it
    assert main(["train", SMOKE, "--out", str(out), "--quiet", "--no-eval"]) == 2
    assert "already holds checkpoints; pass --resume" in capsys.readouterr().err
    assert (
        main(["train", "--resume", "--out", str(out), "--quiet", "--no-eval", "--set", "train.epochs=2"]) == 0
    )
    state = _latest_state(out)
    assert state["epoch"] == 2.0


def test_a_folder_being_trained_is_refused_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    lock = out / ".lock"
    argv = ["train", SMOKE, "--out", str(out), "--quiet", "--no-eval", "--set", "train.epochs=1"]
    lock.write_text(f"{socket.gethostname()} {os.getpid()}\n")  # held by a live process: this one
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"is being trained by process {os.getpid()}" in err and "Traceback" not in err
    assert not (out / "checkpoints").exists()
    # held by a process that has ended (its pid is free again): taken over, and released at the end
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    lock.write_text(f"{socket.gethostname()} {gone}\n")
    assert main(argv) == 0
    assert (out / "checkpoints").is_dir() and not lock.exists()


def test_bf16_is_refused_in_one_line_for_a_family_that_does_not_declare_it(tmp_path, capsys):
    smoke = str(ROOT / "configs" / "smoke_wake_sleep_digits.toml")
    out = tmp_path / "ws"
    assert main(["train", smoke, "--out", str(out), "--quiet", "--set", "train.precision=bf16"]) == 2
    err = capsys.readouterr().err
    assert "model wake_sleep does not support train.precision = 'bf16'" in err and "Traceback" not in err
    assert not out.exists()


def test_train_records_the_given_command_and_resuming_a_version_1_folder_keeps_it_version_1(tmp_path):
    from vaelab.runfolder import command_line

    out = tmp_path / "r"
    argv = ["train", SMOKE, "--out", str(out), "--quiet", "--no-eval", "--set", "train.epochs=1"]
    assert main(argv) == 0
    assert (out / "command.txt").read_text() == command_line(argv) + "\n"
    cfg = (out / "config.json").read_text()
    assert cfg == json.dumps(json.loads(cfg), indent=2, sort_keys=True) + "\n"  # as dump_json writes it
    # a folder from before run.json (version 1): resuming it must not claim version 2, whose report
    # would look for sections.json and hide the folder's figures; vaelab eval upgrades it
    (out / "run.json").unlink()
    again = ["train", "--resume", "--out", str(out), "--quiet", "--no-eval", "--set", "train.epochs=2"]
    assert main(again) == 0
    assert not (out / "run.json").exists()
    assert (out / "command.txt").read_text().splitlines() == [command_line(argv), command_line(again)]


def test_train_into_an_unwritable_out_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("not a folder")
    out = tmp_path / "afile" / "run"
    assert main(["train", SMOKE, "--out", str(out), "--quiet", "--no-eval", "--set", "train.epochs=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: cannot write the run folder") and "Traceback" not in "\n".join(err)


def test_demo(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "Open the report" in text and (out / "report.html").is_file()
    assert "manifold" in {s.name for s in read_sections(out)}


def _latest_state(run):
    name = (run / "checkpoints" / "latest").read_text().strip()
    return json.loads((run / "checkpoints" / name / "state.json").read_text())


def _run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "vaelab.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        timeout=300,
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", SMOKE, "--set", "model.latnet_dim=2"], "unknown config key model.latnet_dim"),
        (["train", SMOKE, "--set", "train.epochs=ten"], "train.epochs must be an integer, got 'ten'"),
        (["train", SMOKE, "--set", "model.latent_dim=-2"], "model.latent_dim must be a positive integer"),
        (["train", "missing.toml"], "config file missing.toml not found"),
        (["train", SMOKE, "--set", "data.name=nosuchset"], "unknown dataset 'nosuchset'"),
        (["train", SMOKE, "--set", "data.name=ap"], "'ap' is a text corpus"),
        (["train", SMOKE, "--device", "cuda"], "no CUDA GPU is visible"),
        # a Bernoulli likelihood on the digits' 17 grey levels: no density; the fix is named
        (["train", SMOKE, "--set", "data.binarize=none"], "data.binarize to dynamic/fixed/threshold, or use"),
        (["eval", "runs/does-not-exist"], "does not exist"),
    ],
)
def test_bad_input_is_one_line(args, message, tmp_path):
    r = _run_cli(*args, "--out", str(tmp_path / "x")) if args[0] == "train" else _run_cli(*args)
    if "cuda" in args and r.returncode == 0:
        pytest.skip("a CUDA GPU is present")
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.strip().splitlines() if line]
    assert lines[-1].startswith("error: ") and message in lines[-1], r.stderr
    assert "Traceback" not in r.stderr


def test_bad_checkpoints_are_one_line(tmp_path):
    import pickle

    pkl = tmp_path / "model.pt"
    pkl.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    r = _run_cli("eval", str(pkl))
    assert r.returncode == 2 and "never unpickles" in r.stderr and "Traceback" not in r.stderr


def test_ddp_two_processes(tmp_path):
    """A 2-process data-parallel run (gloo) trains and writes one run folder from rank 0."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",  # a free port: no clash with another run of this test on the machine
        "-m",
        "vaelab.cli",
        "train",
        SMOKE,
        "--out",
        str(out),
        "--quiet",
        "--no-eval",
        "--device",
        "cpu",
        "--set",
        "train.threads=1",
    ]
    r = subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    # on failure show the workers' own messages (the start of stderr) as well as torchrun's summary
    assert r.returncode == 0, r.stderr[:6000] + "\n...\n" + r.stderr[-1500:]
    state = _latest_state(out)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert state["step"] == rows[-1]["step"] and rows[-1]["epoch"] == 2.0
    assert "finished" in r.stdout


def test_users_own_data_trains_with_no_code(tmp_path):
    """A folder of RGB images of mixed sizes and a NumPy array both train from the CLI."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(15):
            size = (10, 12) if i % 2 else (20, 24)
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / cls / f"{i}.png"
            )
    out = tmp_path / "folder_run"
    args = ["--set", f"data.name=folder:{tmp_path / 'imgs'}", "--set", "data.image_size=[8,6]"]
    args += ["--set", "data.binarize=none", "--set", "model.likelihood=gaussian", "--quiet"]
    assert main(["train", SMOKE, "--out", str(out), *args]) == 0
    ev = json.loads((out / "eval.json").read_text())
    assert ev["n_dims"] == 3 * 8 * 6 and np.isfinite(ev["log_px"])
    samples = {s.name: s for s in read_sections(out)}["samples"]
    assert samples.images.shape[1:] == (3, 8, 6)

    np.save(tmp_path / "x.npy", rng.random((120, 5, 7), dtype=np.float32))
    out = tmp_path / "npy_run"
    assert (
        main(["train", SMOKE, "--out", str(out), "--set", f"data.name=npy:{tmp_path / 'x.npy'}", "--quiet"])
        == 0
    )
    assert json.loads((out / "eval.json").read_text())["n_dims"] == 35


@pytest.mark.datasets("frey")
def test_frey_face_with_a_learned_variance_gaussian_decoder(tmp_path, data_root):
    out = tmp_path / "frey"
    assert main(["train", str(ROOT / "configs" / "smoke_vae_frey.toml"), "--out", str(out), "--quiet"]) == 0
    ev = json.loads((out / "eval.json").read_text())
    assert ev["n_dims"] == 28 * 20 and ev["n_examples"] == 100
    # a density on [0, 1]^560: the IS estimate may be positive, and it bounds the ELBO from above
    assert np.isfinite(ev["log_px"]) and ev["log_px"] >= ev["elbo"] - 1.0
    recon = {s.name: s for s in read_sections(out)}["reconstructions"]
    assert recon.reconstruction.shape[1:] == (1, 28, 20)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_saves_a_resumable_checkpoint_and_exits_with_the_shell_code(tmp_path, signame):
    """SIGTERM (a cluster scheduler, ``docker stop``) is handled like Ctrl-C: the step finishes, a
    checkpoint with the trainer state is written, and the process exits with 128 + the signal."""
    import signal
    import time

    from vaelab.train import checkpoint as ckpt

    sig = getattr(signal, signame)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "vaelab.cli", "train", SMOKE, "--out", str(out), "--quiet", "--no-eval",
           "--set", "train.epochs=100000", "--set", "train.checkpoint_every=1000000"]

    def run_until_logged(args, min_rows):
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        metrics = out / "metrics.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= min_rows:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 128 + sig, (proc.returncode, stderr)
        assert "Traceback" not in stderr
        assert "resume with: vaelab train --resume" in stdout
        return ckpt.load_checkpoint(out, with_trainer_state=True)

    first = run_until_logged(cmd, 2)
    assert first.trainer_state is not None and first.meta["step"] >= 8  # log_every = 4
    rows = len((out / "metrics.jsonl").read_text().splitlines())
    second = run_until_logged(cmd[:4] + ["--resume", "--out", str(out), "--quiet", "--no-eval"], rows + 2)
    assert second.meta["step"] > first.meta["step"]  # the resumed run went on from the saved step
