"""Running the real ``quell`` command in a child process, with bounded waits."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Self


def quell_command() -> list[str]:
    """The installed console script, or ``python -m quell`` when it is not on disk."""
    script = Path(sys.executable).with_name("quell")
    return [str(script)] if script.exists() else [sys.executable, "-m", "quell"]


def run_quell(
    *args: str, env: dict[str, str] | None = None, merge_stderr: bool = False, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``quell ARGS`` to completion."""
    return subprocess.run(
        [*quell_command(), *args],
        env={**os.environ, **(env or {})},
        capture_output=not merge_stderr,
        stdout=subprocess.PIPE if merge_stderr else None,
        stderr=subprocess.STDOUT if merge_stderr else None,
        text=True,
        timeout=timeout,
        check=False,
    )


class QuellProcess:
    """A long-running ``quell`` (serve, demo) whose output lines can be awaited."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [*quell_command(), *args],
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """The first output line matching ``pattern``; fails after ``timeout`` seconds."""
        compiled = re.compile(pattern)
        for line in self.lines:
            if match := compiled.search(line):
                return match
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r}; got {self.lines}") from None
            if line is None:
                raise AssertionError(f"process ended before {pattern!r}; output: {self.lines}")
            self.lines.append(line)
            if match := compiled.search(line):
                return match

    def stop(self) -> int:
        """SIGINT, as Ctrl+C would; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        while not self._queue.empty():
            line = self._queue.get_nowait()
            if line is not None:
                self.lines.append(line)
        return self.process.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
