"""The worker pool: real timeouts, dying workers, replacement, threads."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scope_ray.reward import VerifierPool
from scope_ray.reward.result import Reason

import math_verify  # noqa: E402,F401 - the test extra installs it: missing is a broken set-up

# Slack for process scheduling on a loaded 2-core CI box; the timeouts under
# test are far below it, so a hang still fails the assertions.
MARGIN_S = 3.0
# Exact sympy evaluation of 99999 huge powers: minutes. Passes every cheap
# guard, so only the pool's timeout can stop it.
SLOW_ANSWER = r"\sum_{k=1}^{99999} k^{k}"


# -- scripted judges, run inside the workers (module-level: must pickle) -----


def scripted_judge(answer: str, ground_truth: str) -> Reason:
    """Test judge driven by the answer text. Not reachable from the real
    verifier: the pool only uses it because the test passes it in."""
    command, _, arg = answer.partition(":")
    if command == "sleep":
        time.sleep(float(arg))
    elif command == "crash":
        os._exit(3)
    elif command == "crash-once":
        marker = Path(arg)
        if not marker.exists():
            marker.touch()
            os._exit(3)
    elif command == "allocate":
        bytearray(int(arg))
    elif command == "raise":
        raise RuntimeError("judge bug")
    elif command == "bad-reason":
        return "maybe"  # type: ignore[return-value]
    return "correct" if ground_truth == "ok" else "wrong"


def broken_start_judge(answer: str, ground_truth: str) -> Reason:
    # The worker's warm-up call judges ("1", "1"): die before "ready".
    raise SystemExit(1)


@pytest.fixture(scope="module")
def math_pool() -> Iterator[VerifierPool]:
    with VerifierPool(2) as pool:
        yield pool


@pytest.fixture(scope="module")
def scripted_pool() -> Iterator[VerifierPool]:
    with VerifierPool(2, judge=scripted_judge, memory_headroom_bytes=256 * 1024**2) as pool:
        yield pool


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().split(") ")[1][0] not in "ZX"
    except FileNotFoundError:
        return False


# -- real math timeouts ------------------------------------------------------


def test_pathological_answer_times_out_and_pool_recovers(math_pool: VerifierPool) -> None:
    pids_before = set(math_pool.worker_pids())
    start = time.monotonic()
    result = math_pool.verify(rf"The sum is $\boxed{{{SLOW_ANSWER}}}$", "3", timeout_s=0.2)
    elapsed = time.monotonic() - start
    assert result.reason == "timeout"
    assert result.reward == 0.0
    assert result.extracted == SLOW_ANSWER
    assert elapsed < 0.2 + MARGIN_S
    # The overrunning worker was killed and replaced.
    pids_after = set(math_pool.worker_pids())
    assert len(pids_after) == 2
    killed = pids_before - pids_after
    assert len(killed) == 1
    assert not _alive(killed.pop())
    # ... and the pool still answers, including on the replacement worker.
    for _ in range(3):
        assert math_pool.verify(r"\boxed{\frac{2}{4}}", "0.5").reason == "correct"


def test_timeouts_inside_a_batch_do_not_disturb_neighbours(math_pool: VerifierPool) -> None:
    responses = [
        r"\boxed{\frac{1}{2}}",
        rf"\boxed{{{SLOW_ANSWER}}}",
        r"\boxed{\sqrt{9}}",
        rf"\boxed{{{SLOW_ANSWER}}}",
        r"\boxed{x+1}",
        r"\boxed{[1, 2]}",
    ]
    golds = ["0.5", "1", "3", "1", "1+x", "[1,2)"]
    start = time.monotonic()
    reasons = [r.reason for r in math_pool.verify_batch(responses, golds, timeout_s=0.3)]
    assert reasons == ["correct", "timeout", "correct", "timeout", "correct", "wrong"]
    assert time.monotonic() - start < 2 * 0.3 + 2 * MARGIN_S


def test_pool_serves_callers_in_other_threads(math_pool: VerifierPool) -> None:
    # math-verify's own SIGALRM timeout fails outside the main thread; ours
    # does not use signals.
    results: dict[int, list[str]] = {}

    def work(n: int) -> None:
        batch = math_pool.verify_batch(
            [r"\boxed{\frac{%d}{2}}" % (2 * n), r"\boxed{%d}" % n], [str(n), str(n + 1)]
        )
        results[n] = [r.reason for r in batch]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {n: ["correct", "wrong"] for n in range(4)}


# -- scripted failures -------------------------------------------------------


def test_forced_timeout_kills_only_the_slow_worker(scripted_pool: VerifierPool) -> None:
    start = time.monotonic()
    reasons = scripted_pool.judge_batch(
        [("sleep:30", "ok"), ("fast", "ok"), ("fast", "no")], timeout_s=0.5
    )
    assert reasons == ["timeout", "correct", "wrong"]
    assert time.monotonic() - start < 0.5 + MARGIN_S
    assert scripted_pool.judge_batch([("fast", "ok")]) == ["correct"]


def test_worker_crash_is_a_parse_error_and_the_pool_survives(scripted_pool: VerifierPool) -> None:
    reasons = scripted_pool.judge_batch([("crash:", "ok"), ("fast", "ok")], timeout_s=10)
    assert reasons == ["parse_error", "correct"]
    assert scripted_pool.judge_batch([("fast", "ok")] * 4) == ["correct"] * 4


def test_a_task_whose_worker_died_once_is_retried(
    scripted_pool: VerifierPool, tmp_path: Path
) -> None:
    marker = tmp_path / "crashed-once"
    assert scripted_pool.judge_batch([(f"crash-once:{marker}", "ok")], timeout_s=10) == ["correct"]
    assert marker.exists()  # the first attempt really crashed


def test_externally_killed_idle_worker_is_replaced(scripted_pool: VerifierPool) -> None:
    assert scripted_pool.wait_ready(timeout_s=60)
    victim = scripted_pool.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    # Enough parallel work that the dead worker is needed and noticed.
    jobs = [("sleep:0.2", "ok")] * 4
    assert scripted_pool.judge_batch(jobs, timeout_s=10) == ["correct"] * 4
    assert victim not in scripted_pool.worker_pids()
    assert len(scripted_pool.worker_pids()) == 2


def test_memory_is_capped_in_workers(scripted_pool: VerifierPool) -> None:
    # 2 GiB exceeds the 256 MiB headroom: MemoryError -> parse_error, fast.
    assert scripted_pool.judge_batch([(f"allocate:{2 * 1024**3}", "ok")]) == ["parse_error"]
    assert scripted_pool.judge_batch([(f"allocate:{16 * 1024**2}", "ok")]) == ["correct"]


def test_judge_bugs_become_parse_errors(scripted_pool: VerifierPool) -> None:
    assert scripted_pool.judge_batch([("raise:", "ok"), ("bad-reason:", "ok")]) == [
        "parse_error",
        "parse_error",
    ]


def test_workers_that_cannot_start_raise() -> None:
    pool = VerifierPool(1, judge=broken_start_judge)
    try:
        with pytest.raises(RuntimeError, match="failing to start"):
            pool.judge_batch([("fast", "ok")], timeout_s=1)
    finally:
        pool.close()


# -- lifecycle -----------------------------------------------------------------


def test_wait_ready_times_out_while_workers_import() -> None:
    with VerifierPool(1, judge=scripted_judge) as pool:
        assert pool.wait_ready(timeout_s=0.001) is False
        assert pool.wait_ready(timeout_s=60) is True


def test_close_stops_workers_and_rejects_work() -> None:
    pool = VerifierPool(1, judge=scripted_judge)
    assert pool.judge_batch([("fast", "ok")]) == ["correct"]
    pids = pool.worker_pids()
    pool.close()
    pool.close()  # idempotent
    assert pool.closed
    assert not any(_alive(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="closed"):
        pool.judge_batch([("fast", "ok")])


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        VerifierPool(0)
    with pytest.raises(ValueError):
        VerifierPool(1, start_method="fork")  # type: ignore[arg-type]


def test_forkserver_start_method() -> None:
    with VerifierPool(1, start_method="forkserver") as pool:
        assert pool.verify(r"\boxed{\frac{3}{6}}", "0.5").reason == "correct"
        assert pool.verify(rf"\boxed{{{SLOW_ANSWER}}}", "1", timeout_s=0.2).reason == "timeout"
        assert pool.verify(r"\boxed{\frac{3}{6}}", "0.5").reason == "correct"


def test_pool_inside_a_ray_actor(ray_session) -> None:  # type: ignore[no-untyped-def]
    # The controller may verify from an actor: a threaded process whose
    # __main__ is Ray's worker script, which spawned workers re-import.
    ray = ray_session

    @ray.remote(num_cpus=0)
    class Verifier:
        def __init__(self) -> None:
            self.pool = VerifierPool(1)

        def run(self) -> list[str]:
            results = self.pool.verify_batch(
                [r"\boxed{\frac{1}{2}}", rf"\boxed{{{SLOW_ANSWER}}}", r"\boxed{7}"],
                ["0.5", "1", "7"],
                timeout_s=0.5,
            )
            self.pool.close()
            return [r.reason for r in results]

    actor = Verifier.remote()
    try:
        assert ray.get(actor.run.remote(), timeout=120) == ["correct", "timeout", "correct"]
    finally:
        ray.kill(actor)
