"""launch/ray_job/submit.sh against a real `ray start --head` on loopback.

The head gets its own temp dir and free ports, token auth off (Ray 2.60 turns it on by
default; a loopback test cluster needs none) and loopback as its node address. The tiny
recipe (2 steps) goes through `ray job submit`; the test then reads the run's
metrics.jsonl and the job's status, and stops only the processes it started (never
`ray stop`, which would also kill other Ray clusters on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from _proc_tree import kill_tree, wait_gone

ROOT = Path(__file__).resolve().parents[2]
SUBMIT = ROOT / "launch" / "ray_job" / "submit.sh"
BIN = Path(sys.executable).parent
RAY = BIN / "ray"
TINY = ["trainer.total_steps=2", "trainer.prompts_per_step=4", "rollout.group_size=4",
        "model.max_response_tokens=48", "trainer.eval_every=0", "trainer.eval_at_end=false",
        "trainer.save_every=0", "bootstrap.preset=tiny"]


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(
        # Token auth off: set before `ray start` and for the client alike.
        RAY_AUTH_MODE="disabled",
        # Ray's loopback-only mode (its macOS default): every address is 127.0.0.1.
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
        # The job's `python` must be this venv's (the entrypoint is a shell command).
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        VLLM_LOGGING_LEVEL="WARNING",
    )
    return env


def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


@pytest.fixture
def local_head() -> Iterator[tuple[str, dict[str, str], Path]]:
    # Short path: Ray's unix sockets live under it (108-byte limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="srj-", dir="/tmp"))
    gcs, dash, client, agent, agent_grpc, metrics, renv = _free_ports(7)
    env = _env()
    log = open(temp_dir / "ray_start.log", "wb")  # noqa: SIM115 - closed in teardown
    cmd = [str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={gcs}", "--num-cpus=4", "--num-gpus=0",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
           f"--runtime-env-agent-port={renv}", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        _wait_http(f"{address}/api/version", proc, timeout_s=60)
        # Submissions go through the head node's dashboard agent, which comes up later.
        _wait_http(f"http://127.0.0.1:{agent}/api/healthz", proc, timeout_s=60)
        yield address, env, temp_dir
    finally:
        kill_tree(proc.pid, marker=temp_dir)
        log.close()
        left = wait_gone(temp_dir)
        if not os.environ.get("SCOPE_KEEP_RAY_TMP"):  # set it to keep the Ray logs
            shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"processes of the test cluster still alive: {left}"


def _job_status(address: str, env: dict[str, str], sid: str) -> str:
    out = subprocess.run([str(RAY), "job", "status", "--address", address, sid], env=env,
                         capture_output=True, text=True, timeout=60)
    return out.stdout + out.stderr


def test_submit_tiny_recipe_as_ray_job(local_head, tiny_bootstrap) -> None:
    address, env, temp_dir = local_head
    run_dir = temp_dir / "run"
    sid = f"scope-test-{os.getpid()}"
    # The fixture's cache: the job's bootstrap is a cache hit, nothing is built here.
    cache = ["bootstrap.cache_dir=" + str(Path(tiny_bootstrap.cache_dir).parent)]
    start = time.monotonic()
    for _attempt in range(5):
        res = subprocess.run(
            [str(SUBMIT), "--address", address, "--run-dir", str(run_dir), "--submission-id", sid,
             "--", *TINY, *cache],
            env=env, cwd=temp_dir, capture_output=True, text=True, timeout=240,
        )
        # The head may not have found its agent yet (Ray waits 10 s): nothing was
        # submitted then, so the same submission id can be used again.
        if "No available agent to submit job" not in res.stderr + res.stdout:
            break
        time.sleep(2)
    elapsed = time.monotonic() - start
    logs = (res.stdout + res.stderr)[-4000:]
    assert res.returncode == 0, f"ray job submit failed after {elapsed:.0f} s:\n{logs}"
    assert "succeeded" in _job_status(address, env, sid).lower()

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "learner/loss" in r]
    assert [r["step"] for r in trained] == [1, 2]
    for r in trained:
        assert r["rollout/tokens"] > 0
        assert r["branch/correct_size"] + r["branch/incorrect_size"] == 16
    # The driver ran in the shipped working dir and joined this cluster, not a new one.
    log = (run_dir / "train.log").read_text()
    assert "joining Ray cluster at 127.0.0.1:" in log, log[-2000:]
    # Logs are retrievable after the fact (what `ray job logs -f` follows live).
    out = subprocess.run([str(RAY), "job", "logs", "--address", address, sid], env=env,
                         capture_output=True, text=True, timeout=60)
    assert "Running entrypoint for job" in out.stdout and "scope_ray.cli train" in out.stdout


def test_submit_refuses_bad_arguments_before_contacting_ray(tmp_path) -> None:
    env = _env() | {"RAY": "/bin/false"}  # any call to ray would fail differently
    res = subprocess.run([str(SUBMIT), "--bogus"], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "unknown option --bogus" in res.stderr
    res = subprocess.run([str(SUBMIT), "--config", str(tmp_path / "nope.yaml")], env=env,
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "does not exist" in res.stderr


def test_submit_builds_the_entrypoint_from_recipe_layout_and_overrides(tmp_path) -> None:
    # A fake `ray` records its argv: the job command must be the recipe sent relative to
    # the repo (the job runs in the shipped copy), the layout as overrides, then ours.
    fake = tmp_path / "ray"
    record = tmp_path / "argv.json"
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"json.dump([os.environ.get('RAY_AUTH_MODE'), *sys.argv[1:]], open({str(record)!r}, 'w'))\n")
    fake.chmod(0o755)
    recipe = ROOT / "launch" / "configs" / "r1distill1.5b-skywork7b-scope.yaml"
    layout = ROOT / "launch" / "configs" / "layouts" / "train16-teacher4.yaml"
    env = _env() | {"RAY": str(fake), "RAY_AUTH_TOKEN": "t0ken"}
    env.pop("RAY_AUTH_MODE")
    res = subprocess.run([str(SUBMIT), "--address", "http://head:8265", "--config", str(recipe),
                          "--layout", str(layout), "--run-dir", "/mnt/runs/x", "--no-wait",
                          "--", "trainer.total_steps=3"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    auth_mode, *argv = json.loads(record.read_text())
    # A token in the environment switches the client to token auth, as `ray start` does.
    assert auth_mode == "token"
    assert argv[:4] == ["job", "submit", "--address", "http://head:8265"]
    assert argv[argv.index("--runtime-env") + 1] == str(ROOT / "launch/ray_job/runtime_env.yaml")
    assert argv[argv.index("--working-dir") + 1] == str(ROOT)
    assert "--no-wait" in argv
    job = argv[argv.index("--") + 1:]
    assert job[:6] == ["python", "-m", "scope_ray.cli", "train", "--config",
                       "launch/configs/r1distill1.5b-skywork7b-scope.yaml"]
    assert 'teacher.resources={"teacher_node":1}' in job
    assert job[-2:] == ["trainer.run_dir=/mnt/runs/x", "trainer.total_steps=3"]
    # The submitted command line is a valid training invocation for this recipe.
    from scope_ray.config import load_config

    cfg = load_config(ROOT / job[5], job[6:], check_paths=False)
    assert cfg.teacher.num_replicas == 4 and cfg.trainer.total_steps == 3


def test_submit_resume_passes_the_run_dir_and_excludes_run_dir(tmp_path) -> None:
    fake = tmp_path / "ray"
    record = tmp_path / "argv.json"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    fake.chmod(0o755)
    env = _env() | {"RAY": str(fake)}
    res = subprocess.run([str(SUBMIT), "--resume", "/mnt/runs/r1", "--no-wait"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    argv = json.loads(record.read_text())
    assert argv[argv.index("--") + 1:] == ["python", "-m", "scope_ray.cli", "train", "--resume", "/mnt/runs/r1"]
    res = subprocess.run([str(SUBMIT), "--resume", "/mnt/runs/r1", "--run-dir", "/x"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "exclude each other" in res.stderr
