"""The driver (``scope-ray train``, with the local Ray it starts) killed with SIGKILL.

The run is resumed with ``--resume``: a checkpoint that the kill (or the disk) left
damaged is reported and skipped, the run continues from the newest complete one, every
step ends up logged exactly once, and no process of the killed run survives it. The
same run checks that local mode serves no dashboard / job server and that the Ray auth
token never reaches the logs.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from faults_support import rows
from scope_ray.controller import checkpoint as ckpt

DASHBOARD_PORT = 8265
# Ray's per-node agents notice a dead raylet, then give up reporting it to the dead GCS
# after about a minute; everything else goes within seconds.
AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def _overrides(boot: Any, run_dir: Path) -> list[str]:
    return [
        f"model.student={boot.student_dir}", f"model.teacher={boot.teacher_dir}",
        f"data.train_files=[{boot.train_file}]", "trainer.eval_every=0", "trainer.eval_at_end=false",
        "trainer.prompts_per_step=4", "rollout.group_size=4", "model.max_response_tokens=48",
        "trainer.save_every=1", "trainer.keep_checkpoints=2", "trainer.total_steps=4", "learner.lr=1e-3",
        f"trainer.run_dir={run_dir}", "ray.num_cpus=4",
    ]


def _env() -> dict[str, str]:
    # A fresh local Ray with its defaults (token auth on): not the test session's.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "scope_ray.cli", "train", *args]


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, f"driver exited early with {proc.returncode}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


def _alive(procs: list[psutil.Process], skip: tuple[str, ...] = ()) -> list[str]:
    out = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                name = " ".join(p.cmdline()[:1]) or p.name()
                if not any(s in name for s in skip):
                    out.append(f"{p.pid} {name}")
    return out


def _wait_gone(procs: list[psutil.Process], timeout_s: float, skip: tuple[str, ...] = ()) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (left := _alive(procs, skip)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _listening(procs: list[psutil.Process]) -> list[tuple[str, str, int]]:
    found = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    found.append((p.name(), c.laddr.ip, c.laddr.port))
    return found


def test_sigkilled_driver_resumes_from_last_good_checkpoint(tiny_bootstrap, tmp_path) -> None:
    run_dir = tmp_path / "run"
    out = open(tmp_path / "first.log", "w")  # noqa: SIM115 - closed below
    # Weights go by broadcast, so the learner's and the engines' broadcast group is among
    # the sockets checked below (the default safetensors path opens none of its own).
    first = subprocess.Popen(_cli(*_overrides(tiny_bootstrap, run_dir), "rollout.weight_sync=broadcast"),
                             stdout=out, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    procs: list[psutil.Process] = []
    try:
        # Two checkpoints on disk, the run busy with step 3: kill it there.
        _wait_for(ckpt.checkpoints_dir(run_dir) / "step_000002" / ckpt.MANIFEST, first, 600)
        # Ray's processes, snapshotted while the driver lives (workers re-parent once
        # their raylet is gone, so a later tree walk would miss them).
        procs = psutil.Process(first.pid).children(recursive=True)
        names = {_name(p) for p in procs}
        listening = _listening([psutil.Process(first.pid), *procs])
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        out.close()
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    assert {"raylet", "gcs_server"} <= names, f"no local Ray under the driver: {names}"
    assert not [x for x in listening if x[2] == DASHBOARD_PORT], f"dashboard serving: {listening}"
    # A local run is unreachable from the network: every socket it listens on (Ray's
    # GCS, raylet, workers and agents, the learner's rendezvous, the weight-broadcast
    # group's store and gloo pairs) is on loopback.
    assert len(listening) >= 5, f"too few listening sockets found to judge: {listening}"
    beyond = [x for x in listening if not _is_loopback(x[1])]
    assert not beyond, f"listening beyond loopback: {beyond}"

    # Ray's core (GCS, raylet, the actors with their engines) dies with the driver.
    core_left = _wait_gone(procs, 30, skip=AGENTS)
    assert not core_left, f"still running after the driver's SIGKILL: {core_left}"

    # 4 KB of the newest checkpoint's DeepSpeed model state flipped in place, size
    # unchanged (what a bad disk or a stray write does): resume must notice, set it
    # aside with a warning naming it and the file, and continue from the one before.
    newest = ckpt.latest_valid(run_dir)
    assert newest is not None and newest.step >= 2
    (victim,) = newest.deepspeed_dir.glob("*/mp_rank_00_model_states.pt")
    data = bytearray(victim.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 4096] = bytes(b ^ 0xFF for b in data[mid:mid + 4096])
    victim.write_bytes(bytes(data))
    assert ckpt.validate(newest.path, check_digests=False) is None  # sizes alone miss it

    second = subprocess.run(_cli("--resume", str(run_dir)), capture_output=True, text=True, env=_env(),
                            timeout=600)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    assert f"checkpoint {newest.path} is invalid" in log and "mp_rank_00_model_states.pt does not match" in log
    assert f"resumed from {ckpt.checkpoints_dir(run_dir) / f'step_{newest.step - 1:06d}'}" in log
    # The terminal holds the project's own lines only (progress, summary, its logs);
    # vLLM's, torch's, DeepSpeed's and Ray's output went to train.log instead.
    for text in (log, (tmp_path / "first.log").read_text()):
        foreign = _third_party_lines(text)
        assert not foreign, f"third-party lines on the terminal: {foreign[:5]}"
    assert "step 4/4" in log  # plain progress lines when the output is not a terminal
    train_log = (run_dir / "train.log").read_text()
    assert "vllm" in train_log.lower() and "WARNING" in train_log
    # Set aside, not deleted: the damaged files are still there to look at.
    aside = newest.path.with_name(newest.path.name + ckpt.INVALID_SUFFIX)
    assert (aside / victim.relative_to(newest.path)).read_bytes() == bytes(data)

    # Every step logged once, the last checkpoint complete, no staging leftovers.
    assert [r["step"] for r in rows(run_dir) if "learner/loss" in r] == [1, 2, 3, 4]
    assert ckpt.latest_valid(run_dir).step == 4
    assert not list(ckpt.checkpoints_dir(run_dir).glob(".*.tmp"))

    # Nothing of the killed run outlives the resumed one (the agents included).
    left = _wait_gone(procs, 90)
    assert not left, f"orphans of the killed run: {left}"

    # Token auth was on (Ray's default, kept for local runs) and the token never logged.
    assert "(token auth: token)" in (tmp_path / "first.log").read_text()
    token_file = Path.home() / ".ray" / "auth_token"
    assert token_file.is_file()
    token = token_file.read_text().strip()
    texts = [log, (tmp_path / "first.log").read_text(), (run_dir / "train.log").read_text(),
             (run_dir / "config.yaml").read_text()]
    assert len(token) >= 16 and not any(token in t for t in texts)


_OWN_LINE = re.compile(
    r"^(\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) (scope_ray|actors)[.:]"  # the project's logs
    r"|step \d+/\d+ "  # progress
    r"|\s*scope-ray: |[┏┃┡│└]|run directory: )"  # the summary table
)


def _third_party_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not _OWN_LINE.match(line)]


def _is_loopback(ip: str) -> bool:
    import ipaddress

    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)  # "::ffff:127.0.0.1"
    return (mapped or addr).is_loopback


def _name(p: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return p.name()
    return ""


def test_sigterm_checkpoints_the_step_and_exits_3(tiny_bootstrap, tmp_path) -> None:
    """What a preempting scheduler does (SIGTERM to the driver): the step in progress is
    finished and checkpointed, even with ``save_every: 0``, and the CLI stops with exit
    code 3 and one line naming the checkpoint and the resume command (a real deliberate
    stop through the real CLI, nothing stubbed)."""
    run_dir = tmp_path / "run"
    overrides = [o for o in _overrides(tiny_bootstrap, run_dir) if not o.startswith(("trainer.save_every",
                                                                                        "trainer.total_steps"))]
    proc = subprocess.Popen(_cli(*overrides, "trainer.save_every=0", "trainer.total_steps=200"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            start_new_session=True)
    try:
        metrics = run_dir / "metrics.jsonl"
        _wait_for(metrics, proc, 600)
        while not rows(run_dir):
            assert proc.poll() is None, "driver exited before its first step"
            time.sleep(0.2)
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err[-3000:]
    steps = [r["step"] for r in rows(run_dir) if "learner/loss" in r]
    last = ckpt.latest_valid(run_dir)  # digests checked
    assert last is not None and steps == list(range(1, last.step + 1)) and last.step < 200
    lines = err.strip().splitlines()
    assert lines[-1] == (f"scope-ray: training stopped: SIGTERM received: stopped after step {last.step} of 200; "
                         f"saved checkpoint: {last.path}; continue with: scope-ray train --resume {run_dir}")
    assert "Traceback" not in err
    # The driver shut its local Ray down on the way out.
    left = _wait_gone(children, 30, skip=AGENTS)
    assert not left, f"still running after the stop: {left}"


def test_torn_metrics_line_is_skipped_on_resume(tmp_path, caplog) -> None:
    """A SIGKILL mid-write can leave half a JSON line at the end of metrics.jsonl."""
    from scope_ray.controller.run_logger import RunLogger

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "learner/loss": 0.5}\n{"step": 2, "learner/lo')
    log = RunLogger(tmp_path, resume_step=1)
    log.close()
    assert [r["step"] for r in log.read()] == [1]
    assert any("not valid JSON" in r.getMessage() for r in caplog.records)
