"""The README's Python examples run as written, against the live daemon
(``HULL_SOCKET`` pointing at it), and leave no sandbox or snapshot behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Daemon

import hull

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example(daemon: Daemon, client: hull.Hull, code: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HULL_URL", "HULL_TOKEN")}
    env["HULL_SOCKET"] = daemon.socket
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    assert client.list() == []
    assert client.snapshots.list() == []
