"""`flight-server serve` in a process of its own, for tests that kill or restart it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from support.servers import serve_env

BIN = Path(sys.executable).parent / "flight-server"


class ServerProcess:
    """`flight-server serve` in its own process, on a free port, logs drained."""

    def __init__(self, data_dir: Path, **env: str) -> None:
        environ = serve_env(data_dir, **{"FLIGHT_CACHE__WARM_TOP_N": "0", **env})
        self.proc = subprocess.Popen(
            [str(BIN), "serve"], env=environ, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        assert self.proc.stderr is not None
        lines, url = [], None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            lines.append(line)
            match = re.search(r"listening on (grpc://\S+)", line)
            url = match.group(1) if match else None
        assert url, "server did not start:\n" + "".join(lines)
        self.url = url
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
