"""What every job script runs: the `tickray` verb of the same name, under whichever Python runs it.

`ray job submit -- python jobs/X.py` runs a bare `python` as the head's own interpreter. When that Python
lacks the installed project, the uploaded working directory supplies it (platform/); when it lacks the
project's dependencies, the job fails at once with the reason in its logs, not with a deep traceback.
"""

import importlib.util
import sys
from pathlib import Path


def run(verb: str) -> int:
    if importlib.util.find_spec("tickray") is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
    try:
        from tickray.cli import main
    except ImportError as e:
        print(f"jobs/{verb}.py: {sys.executable} cannot import {e.name!r}. A job's bare `python` is the Python "
              "the Ray head was started with: start the head from the project's environment (`tickray up`, or "
              "the cluster image built from infra/Dockerfile), or name an interpreter that has it "
              f"(`-- /path/to/venv/bin/python jobs/{verb}.py`).", file=sys.stderr)
        return 2
    return main([verb, *sys.argv[1:]])
