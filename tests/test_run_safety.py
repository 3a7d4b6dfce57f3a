"""A run directory has one owner; a resume trains on the data and classes the run started with."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from layerlock.data.datasets import _class_key
from layerlock.errors import ConfigError, LayerlockError
from layerlock.finetune import finetune
from layerlock.finetune.recipe import FinetuneRecipe
from layerlock.run_lock import RunDirBusyError, RunLock
from test_finetune import make_folder, tiny_config


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


# -- one owner per run directory -------------------------------------------------------------


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    with (
        RunLock(tmp_path),
        pytest.raises(RunDirBusyError, match=rf"{tmp_path} is in use by process {os.getpid()}"),
    ):
        RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire().release()  # free again


def test_lock_of_a_killed_process_is_not_in_the_way(tmp_path: Path) -> None:
    code = (
        "import sys, time; from layerlock.run_lock import RunLock; "
        f"lock = RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        with pytest.raises(RunDirBusyError, match=f"process {child.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    RunLock(tmp_path).acquire().release()  # the kernel dropped the dead owner's lock


def test_second_resume_of_a_run_in_use_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    first = finetune(tiny_config(tmp_path, epochs=2), stop_after=1)
    before = _files(first.run_dir)
    # another process is resuming it right now
    with RunLock(first.run_dir), pytest.raises(RunDirBusyError, match="is in use by process"):
        finetune(tiny_config(tmp_path, epochs=2, resume=str(first.run_dir)))
    assert _files(first.run_dir) == before


def test_new_run_skips_a_directory_claimed_by_another(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with RunLock(out):  # claimed, config not written yet
        result = finetune(tiny_config(tmp_path, epochs=1))
    assert result.run_dir == tmp_path / "run-2"


def test_empty_out_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="out_dir: must not be empty"):
        tiny_config(tmp_path, out_dir="")


def test_out_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    with pytest.raises(ConfigError, match=r"out_dir: .*taken is a file, not a folder"):
        tiny_config(tmp_path, out_dir=str(tmp_path / "taken"))


# -- classes and data on resume ----------------------------------------------------------------


@pytest.mark.parametrize(
    "names", [["nan", "10", "2", "b", "inf", "-1", "a", "1.0", "1"], ["NaN", "nan", "x", "0"]]
)
def test_class_order_is_total_and_independent_of_input_order(names: list[str]) -> None:
    orders = {tuple(sorted(p, key=_class_key)) for p in itertools.permutations(names[:6])}
    assert len(orders) == 1
    finite = [n for n in sorted(names, key=_class_key) if _class_key(n)[0] == 0]
    assert [float(n) for n in finite] == sorted(float(n) for n in finite)


def test_resume_refuses_changed_data_unless_allowed(tmp_path: Path) -> None:
    first = finetune(tiny_config(tmp_path, epochs=2), stop_after=1)
    extra = tmp_path / "data" / "train" / "red" / "extra.png"
    extra.write_bytes((tmp_path / "data" / "train" / "red" / "0.png").read_bytes())
    with pytest.raises(LayerlockError, match=r"data changed since it started \(train 12 -> 13"):
        finetune(tiny_config(tmp_path, epochs=2, resume=str(first.run_dir)))
    extra.unlink()
    os.utime(tmp_path / "data" / "val" / "blue" / "0.jpg", ns=(1, 1))  # rewritten file
    with pytest.raises(LayerlockError, match=r"val 6 -> 6 samples \(or files rewritten\)"):
        finetune(tiny_config(tmp_path, epochs=2, resume=str(first.run_dir)))
    done = finetune(
        tiny_config(
            tmp_path, epochs=2, resume=str(first.run_dir), **{"run.allow_data_change": True}
        )
    )
    assert not done.interrupted
    events = [json.loads(x) for x in (first.run_dir / "events.jsonl").read_text().splitlines()]
    assert any(e["label"].startswith("data changed on resume: val") for e in events)


def test_resume_refuses_changed_classes(tmp_path: Path) -> None:
    first = finetune(tiny_config(tmp_path, epochs=2), stop_after=1)
    for split in ("train", "val"):
        (tmp_path / "data" / split / "red").rename(tmp_path / "data" / split / "crimson")
    with pytest.raises(
        LayerlockError,
        match=r"its classes were \[blue, green, red\], the data now gives \[blue, crimson, green\]",
    ):
        finetune(tiny_config(tmp_path, epochs=2, resume=str(first.run_dir)))


def test_resume_of_a_finished_run_says_so_and_keeps_its_files(tmp_path: Path) -> None:
    done = finetune(tiny_config(tmp_path, epochs=1))
    before = _files(done.run_dir)
    time.sleep(0.01)
    with pytest.raises(LayerlockError, match=r"is a finished run \(1 of 1 epochs\)"):
        finetune(tiny_config(tmp_path, epochs=1, resume=str(done.run_dir)))
    assert _files(done.run_dir) == before


def test_crash_between_epoch_row_and_checkpoint_leaves_no_duplicate_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_folder(tmp_path / "data")
    cfg = tiny_config(tmp_path, epochs=2)
    first = finetune(cfg, stop_after=3)  # epoch 1 trained to its last step, not evaluated
    assert first.interrupted and first.epochs == []

    def crash(self: FinetuneRecipe) -> None:
        raise KeyboardInterrupt  # killed after the epoch's row, before its checkpoint

    monkeypatch.setattr(FinetuneRecipe, "save_checkpoint", crash)
    resume = tiny_config(tmp_path, epochs=2, resume=str(first.run_dir))
    with pytest.raises(KeyboardInterrupt):
        finetune(resume)
    rows = [json.loads(x) for x in (first.run_dir / "epochs.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]  # written before the crash
    monkeypatch.undo()
    finished = finetune(resume)
    assert [r["epoch"] for r in finished.epochs] == [1, 2]


def test_a_forked_child_does_not_keep_the_lock_of_a_killed_parent(tmp_path: Path) -> None:
    code = (
        "import os, signal, sys, time\n"
        "from layerlock.run_lock import RunLock\n"
        f"lock = RunLock({str(tmp_path)!r}).acquire()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print(pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.wait(timeout=60)
    try:
        RunLock(tmp_path).acquire().release()  # the child (a loader worker) still lives
    finally:
        os.kill(child, signal.SIGKILL)
