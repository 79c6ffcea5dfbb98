"""Small helpers shared by tests (test code, kept apart from the benchmarks' own helpers)."""

import socket

from compactcnn.cli import main


def free_ports(count: int) -> list[int]:
    """Loopback ports free right now, for the TF_CONFIG of local worker processes.

    Args:
        count: How many distinct ports to find.

    Returns:
        `count` port numbers that were free on 127.0.0.1 when checked.
    """
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def one_line_error(capsys, argv: list[str], expected: str) -> str:
    """Runs the CLI in-process; asserts exit 2 and a one-line `error:` naming `expected`.

    Returns:
        The error line.
    """
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ")
    assert "\n" not in err and "Traceback" not in err
    assert expected in err
    return err
