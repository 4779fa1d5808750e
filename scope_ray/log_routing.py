"""Where output goes: the project's own lines to the terminal, everything to ``train.log``.

A local run starts ~4 processes full of other libraries (vLLM, torch, DeepSpeed, Ray),
each with its warnings about LD_PRELOAD, Triton, NUMA binding, thread counts and so on;
on the terminal they buried the run's own lines (47 of 144 lines of the main job). So:

* **driver**: the terminal handler passes records of the project's loggers
  (``scope_ray.*``, ``actors.*``) and any ERROR; a run's ``train.log`` gets everything,
  Python warnings included (``logging.captureWarnings``).
* **actors and helper processes of a local run**: their stdout and stderr (file
  descriptors 1 and 2, so C++ and Python output alike) are appended to ``train.log``;
  Ray does not forward them to the driver. The file is named by
  ``SCOPE_RAY_PROCESS_LOG`` in the environment, which every process the local Ray
  spawns inherits (an environment variable because Ray restarts actors on its own:
  a restarted actor finds it there without the driver's help).
* ``scope-ray -v`` keeps the full stream on the terminal, as before. Joined clusters
  (``ray job submit``) keep Ray's own per-actor logs: they are where cluster users look.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

PROCESS_LOG_ENV = "SCOPE_RAY_PROCESS_LOG"
PROJECT_LOGGERS = frozenset({"scope_ray", "actors", "__main__"})
# Third-party loggers that log every engine step or request at INFO; WARNING and up
# still reach train.log.
CHATTY = ("vllm", "ray", "deepspeed", "urllib3", "matplotlib", "filelock", "httpx", "transformers")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_verbose = False


# ``logger.error(..., extra=FILE_ONLY)``: for train.log, not the terminal (e.g. the full
# traceback of an error the CLI reports in one line).
FILE_ONLY = {"terminal": False}


class ProjectLinesOnly(logging.Filter):
    """The project's own records, and errors from anyone; never FILE_ONLY records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "terminal", True):
            return False
        return record.name.split(".", 1)[0] in PROJECT_LOGGERS or record.levelno >= logging.ERROR


def setup_driver_logging(verbose: bool) -> None:
    global _verbose
    _verbose = verbose
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for old in [h for h in root.handlers if getattr(h, "scope_ray_terminal", False)]:
        root.removeHandler(old)  # main() called again in one process (tests)
    terminal = logging.StreamHandler(sys.stderr)
    terminal.scope_ray_terminal = True  # type: ignore[attr-defined]
    terminal.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    if not verbose:
        terminal.addFilter(ProjectLinesOnly())
        logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger -> train.log
    root.addHandler(terminal)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)


def is_verbose() -> bool:
    return _verbose


def add_run_log(path: Path) -> None:
    """Every record from here on also goes to ``path`` (the run's train.log)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(FORMAT))
    logging.getLogger().addHandler(handler)


def route_process_output(path: Path) -> None:
    """Processes started from now on (Ray's, the bootstrap's evaluation child) append
    their stdout / stderr to ``path``; see :func:`capture_process_output`. Also sends
    the Ray client's own log records through the root logger (terminal filter, file)."""
    os.environ[PROCESS_LOG_ENV] = str(Path(path).resolve())
    ray_logger = logging.getLogger("ray")
    for handler in list(ray_logger.handlers):
        ray_logger.removeHandler(handler)
    ray_logger.propagate = True


def routes_process_output() -> bool:
    return bool(os.environ.get(PROCESS_LOG_ENV))


def capture_process_output() -> None:
    """First thing in an actor or helper process: point fds 1 and 2 at the file named
    by ``SCOPE_RAY_PROCESS_LOG`` (appending), if any. No-op otherwise."""
    path = os.environ.get(PROCESS_LOG_ENV)
    if not path:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
