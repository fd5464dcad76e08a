"""Training faults: unusable data, deep nesting, preemption and resume, finished runs, modes, numba's cache."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from storm_vlm.model_dir import share_like_umask
from storm_vlm.modeling import scan_cpu
from storm_vlm.modeling.reduction import ReductionSettings
from storm_vlm.train import load_recipe, train
from storm_vlm.train.data import BadSample, DataError, LlavaVideoDataset, read_samples
from storm_vlm.train.recipe import RecipeError

from .conftest import tiny_train_overrides as overrides
from .conftest import train_log

REPO = Path(__file__).resolve().parents[1]


def recipe(data: Path, out: Path, *extra: str):
    return load_recipe(None, overrides(data, out, *extra))


def log_steps(out: Path) -> list[int]:
    return [r["step"] for r in train_log(out)]


def bad_copy(data: Path, tmp_path: Path) -> Path:
    """The data set with every video missing."""
    samples = json.loads((data / "train.json").read_text())
    for i, sample in enumerate(samples):
        sample["video"] = f"missing-{i}.mp4"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(samples))
    return path


# --- data that cannot train ---------------------------------------------------------------


def test_all_bad_samples_stop_after_one_epoch_without_a_final_model(data, tmp_path):
    bad = bad_copy(data, tmp_path)
    out = tmp_path / "run"
    r = recipe(data, out, f"data.json={bad}", "optim.max_steps=null", "optim.epochs=50")  # 200 steps
    with pytest.raises(DataError) as err:
        train(r)
    message = str(err.value)
    assert str(bad) in message and "no sample could be used (8 skipped" in message and "missing-" in message
    assert "\n" not in message
    assert not (out / "final").exists()
    assert log_steps(out) == [1, 2, 3, 4]  # refused once the first epoch (8 samples / 2) was all bad


def test_all_bad_samples_on_the_cli_are_one_line_and_exit_2(data, tmp_path):
    bad = bad_copy(data, tmp_path)
    out = tmp_path / "run"
    args = overrides(data, out, f"data.json={bad}", "optim.max_steps=2")
    proc = subprocess.run([sys.executable, "-m", "storm_vlm", "train", str(REPO / "configs/tiny-stage2.yaml"),
                           "model=null", *args], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and "no sample could be used" in errors[0]
    assert "Traceback" not in proc.stderr and not (out / "final").exists()


DEEP = 10_000


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("list.json", "[" * DEEP + "]" * DEEP),
        ("value.json", '[{"conversations": [{"from": "human", "value": ' + '{"a": ' * DEEP + "1" + "}" * DEEP + "}]}]"),
        ("value.jsonl", '{"conversations": [{"from": "gpt", "value": ' + "[" * DEEP + "]" * DEEP + "}]}\n"),
    ],
)
def test_deeply_nested_data_is_one_line_naming_the_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: JSON nested too deeply"):
        read_samples(path)


def test_deeply_nested_data_stops_training_before_the_model_loads(data, tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * DEEP + "]" * DEEP)
    with pytest.raises(DataError, match=re.escape(str(path))):
        train(recipe(data, tmp_path / "run", f"data.json={path}"))


def test_a_deep_turn_or_id_is_a_bad_sample_with_a_short_reason(tiny):
    model, processor = tiny
    deep: object = "x"
    for _ in range(300):
        deep = {"a": deep}
    samples = [{"id": deep, "conversations": [{"from": "human", "value": deep}, {"from": "gpt", "value": "x"}]}]
    settings = ReductionSettings.resolve(model.config, training=True)
    dataset = LlavaVideoDataset(samples, processor, ".", 4, settings, 4096)
    item = dataset[0]
    assert isinstance(item, BadSample) and "malformed turn" in item.reason and len(item.reason) < 300


def test_deeply_nested_recipe_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("lora: " + "[" * DEEP + "]" * DEEP + "\n")
    with pytest.raises(RecipeError, match=rf"^{re.escape(str(path))}: nested too deeply"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="override lora: the value is nested too deeply"):
        load_recipe(None, ["lora=" + "[" * DEEP + "]" * DEEP])


# --- preemption, resume, leftovers ----------------------------------------------------------


def _logged(log: Path) -> int:
    """The last step ``log`` shows so far (a line being written is not yet one)."""
    steps = [0]
    for line in log.read_text().splitlines() if log.is_file() else []:
        try:
            steps.append(json.loads(line)["step"])
        except json.JSONDecodeError:
            pass
    return max(steps)


def _run_until(command: list[str], cwd: Path, log: Path, after_step: int, signum: int) -> tuple[int, str]:
    """Start the command, send ``signum`` once ``log`` shows ``after_step``; its exit code and stderr."""
    stderr = cwd / f"stderr-{signum}.txt"
    with stderr.open("w") as err:
        proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and proc.poll() is None:
                if _logged(log) >= after_step:
                    proc.send_signal(signum)
                    break
                time.sleep(0.02)
            code = proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
    return code, stderr.read_text()


INTERRUPTED = re.compile(
    r"^interrupted \((SIGTERM|SIGINT)\) at step (\d+); checkpoint written to (\S+); rerun the same command to resume$"
)


def test_sigterm_and_sigint_write_a_checkpoint_and_the_same_command_resumes(data, tmp_path):
    out = tmp_path / "run"
    recipe_file = tmp_path / "recipe.yaml"
    tree = {
        "stage": 2,
        "init": {"preset": "tiny"},
        "output_dir": str(out),
        "data": {"json": str(data / "train.json"), "media_root": str(data), "num_frames": 4},
        "optim": {"batch_size": 2, "lr": 2e-3, "max_steps": 16},
    }  # save_every 0: the only checkpoints are the ones the signals write
    recipe_file.write_text(yaml.safe_dump(tree))
    command = [sys.executable, "-m", "storm_vlm", "train", str(recipe_file)]
    log = out / "train_log.jsonl"

    code, stderr = _run_until(command, tmp_path, log, after_step=1, signum=signal.SIGTERM)
    assert code == 143, stderr[-3000:]
    match = INTERRUPTED.match(stderr.strip().splitlines()[-1])
    assert match and match.group(1) == "SIGTERM", stderr[-3000:]
    first = int(match.group(2))
    assert Path(match.group(3)) == out / "checkpoints" / f"step-{first:06d}"
    assert (Path(match.group(3)) / "trainer_state.json").is_file() and not (out / "final").exists()
    assert "Traceback" not in stderr and first < 16

    code, stderr = _run_until(command, tmp_path, log, after_step=first + 1, signum=signal.SIGINT)
    assert code == 130, stderr[-3000:]
    match = INTERRUPTED.match(stderr.strip().splitlines()[-1])
    assert match and match.group(1) == "SIGINT" and int(match.group(2)) > first, stderr[-3000:]
    assert not (out / "final").exists()

    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from {out / 'checkpoints' / f'step-{int(match.group(2)):06d}'}" in proc.stdout
    assert log_steps(out) == list(range(1, 17))  # every step once, in order
    assert (out / "final" / "model.safetensors").is_file() and not (out / ".unfinished").exists()

    # the resumed run is the uninterrupted one, step by step
    train(load_recipe(recipe_file, [f"output_dir={tmp_path / 'whole'}"]))
    whole = [r["loss"] for r in train_log(tmp_path / "whole")]
    cut = [r["loss"] for r in train_log(out)]
    assert len(whole) == len(cut) == 16
    assert all(abs(a - b) <= 1e-6 for a, b in zip(whole, cut)), (whole, cut)


def test_resume_drops_leftovers_and_log_records_after_the_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    common = ("save_every=2", "optim.max_steps=8", "keep_last=0")
    assert train(recipe(data, out, *common), stop_after_steps=5).final_dir is None  # checkpoints 2, 4, 5
    assert log_steps(out) == [1, 2, 3, 4, 5]
    # a crash after step 5 was logged but before its checkpoint was renamed, in the middle of a line
    shutil.rmtree(out / "checkpoints" / "step-000005")
    (out / "checkpoints" / ".step-000005.tmp").mkdir()
    (out / ".final.tmp-abc123").mkdir()
    with (out / "train_log.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')

    result = train(recipe(data, out, *common))
    assert result.steps == 8 and result.final_dir.is_dir()
    assert log_steps(out) == list(range(1, 9))  # step 5 once: the resumed run (from step 4) logged it again
    assert not (out / "checkpoints" / ".step-000005.tmp").exists() and not (out / ".final.tmp-abc123").exists()


def test_a_checkpointed_run_with_resume_false_is_refused(data, tmp_path):
    out = tmp_path / "run"
    train(recipe(data, out, "save_every=1"), stop_after_steps=2)
    with pytest.raises(RecipeError, match=r"holds checkpoints of an unfinished run \(newest step-000002\)"):
        train(recipe(data, out, "save_every=1", "resume=false"))
    fresh = train(recipe(data, out, "save_every=1", "resume=false", "overwrite=true"))
    assert fresh.steps == 4 and log_steps(out) == [1, 2, 3, 4]


def test_a_finished_run_is_done_unless_overwrite_which_replaces_final_only_once_written(data, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from storm_vlm.cli import app
    from storm_vlm.processing_storm import StormProcessor

    out = tmp_path / "run"
    weights = out / "final" / "model.safetensors"
    train(recipe(data, out, "optim.max_steps=2"))
    first, log = weights.stat(), (out / "train_log.jsonl").read_text()

    again = train(recipe(data, out, "optim.max_steps=2", "log_every=5"))  # log_every does not change the model
    assert again.already_done and again.steps == 0 and again.final_dir == out / "final"
    assert weights.stat().st_ino == first.st_ino and (out / "train_log.jsonl").read_text() == log

    cli = CliRunner().invoke(app, ["train", str(out / "recipe.yaml")])  # the recipe the run saved
    assert cli.exit_code == 0, cli.output
    assert cli.output.strip().splitlines() == [
        f"{out / 'final'} is complete: already trained; pass --overwrite (overwrite=true) to train again"
    ]

    with pytest.raises(RecipeError, match=r"final was trained with optim\.max_steps: 2, this recipe has 3"):
        train(recipe(data, out, "optim.max_steps=3"))

    def disk_full(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(StormProcessor, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="disk full"):
        train(recipe(data, out, "optim.max_steps=2", "overwrite=true"))
    monkeypatch.undo()
    assert weights.stat().st_ino == first.st_ino and (out / "final" / "recipe.yaml").is_file()  # the old one, whole
    assert not list(out.glob(".final.*"))

    cli = CliRunner().invoke(app, ["train", str(out / "recipe.yaml"), "--overwrite"])
    assert cli.exit_code == 0, cli.output
    assert weights.stat().st_ino != first.st_ino and not list(out.glob(".final.*"))
    assert train(recipe(data, out, "optim.max_steps=2")).already_done


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_model_directories_are_readable_as_the_umask_allows(data, tmp_path, tiny):
    from storm_vlm.presets import save_model_dir

    old = os.umask(0o022)
    try:
        result = train(recipe(data, tmp_path / "run", "save_every=1", "optim.max_steps=2"))
        model, processor = tiny
        saved = save_model_dir(model, processor, tmp_path / "init")
    finally:
        os.umask(old)
    for folder in (result.final_dir, tmp_path / "run" / "checkpoints" / "step-000001", saved):
        assert _mode(folder) == 0o755, folder
        files = [p for p in folder.rglob("*") if p.is_file()]
        assert files and all(_mode(p) == 0o644 for p in files), folder


def test_share_like_umask_follows_the_umask(tmp_path):
    root = Path(tempfile.mkdtemp(dir=tmp_path))  # 0700
    (root / "sub").mkdir()
    handle, name = tempfile.mkstemp(dir=root / "sub")  # 0600
    os.close(handle)
    old = os.umask(0o027)
    try:
        share_like_umask(root)
    finally:
        os.umask(old)
    assert (_mode(root), _mode(root / "sub"), _mode(Path(name))) == (0o750, 0o750, 0o640)


# --- numba's cache without a writable package folder or HOME ---------------------------------


def test_numba_cache_dir_falls_back_only_when_nothing_is_writable(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    pkg, home = Path("/site/storm_vlm/modeling"), Path("/home/u")
    asked: list[Path] = []

    def only(*allowed: Path):
        def writable(path: Path) -> bool:
            asked.append(path)
            return path in allowed

        return writable

    env = {"HOME": str(home)}
    assert scan_cpu.numba_cache_dir(pkg, {**env, "NUMBA_CACHE_DIR": "/x"}, only()) is None
    assert scan_cpu.numba_cache_dir(pkg, env, only(pkg / "__pycache__")) is None
    assert scan_cpu.numba_cache_dir(pkg, env, only(home / ".cache" / "numba")) is None
    assert scan_cpu.numba_cache_dir(pkg, {**env, "XDG_CACHE_HOME": "/xdg"}, only(Path("/xdg/numba"))) is None
    asked.clear()
    chosen = scan_cpu.numba_cache_dir(pkg, env, only())
    assert asked == [pkg / "__pycache__", home / ".cache" / "numba"]
    uid = os.getuid()
    assert chosen == str(tmp_path / f"storm-vlm-numba-{uid}") and _mode(Path(chosen)) == 0o700
    assert scan_cpu.numba_cache_dir(pkg, env, only()) == chosen  # kept between runs

    os.chmod(chosen, 0o777)  # writable by others: its pickles cannot be trusted
    other = scan_cpu.numba_cache_dir(pkg, env, only())
    assert other != chosen and Path(other).name.startswith("storm-vlm-numba-") and _mode(Path(other)) == 0o700


def test_writable_predicate(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert scan_cpu._writable(tmp_path / "new" / "deeper")  # made on demand under a writable folder
    assert not scan_cpu._writable(blocker / "__pycache__")  # a file in the way
    assert not scan_cpu._writable(blocker)


def test_the_scan_imports_where_neither_package_folder_nor_home_is_writable(tmp_path):
    """A copy of the module whose ``__pycache__`` and HOME are files: numba has nowhere to cache.

    Tests run as root, for whom every folder is writable; a file in the way fails for root too.
    Without the fallback the import fails with numba's "cannot cache function".
    """
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    shutil.copy(scan_cpu.__file__, pkg / "scan_cpu.py")
    (pkg / "__pycache__").write_text("")
    (tmp_path / "home").write_text("")
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    env |= {"HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp"), "PYTHONDONTWRITEBYTECODE": "1"}
    code = f"import sys; sys.path.insert(0, {str(pkg)!r}); import scan_cpu; print(scan_cpu._scan_fwd._cache.cache_path)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().startswith(str(tmp_path / "tmp" / f"storm-vlm-numba-{os.getuid()}"))
