"""Jobs without a broker that run in a process of their own (training): started here, detached
from the caller (a page can be left and reopened), with this process's settings in its environment.

    start_process(kind, kwargs, env, log_path) -> subprocess.Popen
        runs `python -m core run-job KIND '{"run_id": 7}'` (core/cli/worker.py): the job's body from
        core.jobs.tasks.JOBS, in the new process
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from core import config


def start_process(kind: str, kwargs: dict, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """The job as its own process and session; a thread waits for it, so it never lingers as a zombie."""
    full_env = dict(os.environ)
    full_env.update(env)
    full_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    full_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(config.PROJECT_ROOT), os.environ.get("PYTHONPATH")])
    )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "core", "run-job", kind, json.dumps(kwargs)],
            cwd=str(config.PROJECT_ROOT),
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    threading.Thread(target=child.wait, name=f"job-{kind}-{child.pid}", daemon=True).start()
    return child
