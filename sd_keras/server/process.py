"""Run ``sd-keras serve`` in a subprocess on a free loopback port (tests, benchmarks, notebooks).

Example:
    >>> with ServerProcess("-m", "tiny") as server:                       # doctest: +SKIP
    ...     httpx.get(server.url + "/health").json()["status"]
    'ok'
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time

_LISTENING = re.compile(r"sd-keras serve: listening on (http://[\w.\[\]:]+)")


class ServerProcess:
    """``sd-keras serve ARGS --host 127.0.0.1 --port 0`` in a child process; ``url`` once it listens.

    Its output goes to a file (``log()`` reads it), so a chatty server never blocks on a full pipe.
    """

    def __init__(self, *args, env=None, startup_timeout=600.0):
        self.args = list(args)
        self.env = dict(os.environ if env is None else env)
        self.startup_timeout = startup_timeout
        self.process = None
        self.url = None
        self._log = None

    def start(self):
        self._log = tempfile.NamedTemporaryFile(prefix="sd-keras-serve-", suffix=".log", delete=False)
        command = [sys.executable, "-m", "sd_keras.cli", "serve", "--host", "127.0.0.1", "--port", "0", *self.args]
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                        stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log())
            if match:
                self.url = match.group(1)
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"sd-keras serve exited with status {self.process.returncode}:\n{self.log()}")
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"sd-keras serve did not start within {self.startup_timeout} s:\n{self.log()}")

    @property
    def pid(self):
        return self.process.pid

    def log(self):
        if self._log is None:
            return ""
        with open(self._log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def rss_bytes(self):
        """Resident memory of the server process (Linux ``/proc``)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("VmRSS not found")

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout=30.0):
        """SIGINT (uvicorn's graceful shutdown), then SIGKILL if it does not exit in ``timeout`` seconds."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode if self.process is not None else None

    def close(self):
        self.stop()
        if self._log is not None:
            self._log.close()
            os.unlink(self._log.name)
            self._log = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
