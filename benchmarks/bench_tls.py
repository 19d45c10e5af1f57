"""What TLS costs on the wire: one large ``result`` frame (a mesh of ``--faces`` triangles with UVs) sent and received
with the protocol's own helpers over a loopback TCP connection, plain and through ``blender_addon/core/tls.py``'s
TLSStream (the code both the backend and the add-on use).

    python benchmarks/bench_tls.py [--faces 1000000] [--repeats 5]

Prints the median seconds per frame and MB/s for plain TCP (the baseline, measured in the same run) and TLS, and their
ratio. Needs the ``cryptography`` package (for the throw-away certificate).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from backend.serving.certificates import make_certificate  # noqa: E402
from blender_addon.core import protocol, tls  # noqa: E402


def mesh_frame(faces: int) -> bytes:
    """A ``result`` frame holding a random mesh of ``faces`` triangles (about faces / 2 vertices) with UVs."""
    rng = np.random.default_rng(0)
    n = max(faces // 2, 3)
    v_pos = rng.standard_normal((n, 3)).astype(np.float32)
    t_pos_idx = rng.integers(0, n, (faces, 3)).astype(np.int32)
    uv = rng.random((n, 2)).astype(np.float32)
    arrays = protocol.mesh_arrays("mesh", v_pos, t_pos_idx, uv, t_pos_idx.copy())
    return protocol.encode_message("result", {"job_id": "bench", "metadata": {}}, arrays)


def pair(use_tls: bool, cert_dir: Path):
    """A connected (sender, receiver) over loopback TCP; TLS-wrapped when asked."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    if not use_tls:
        return server, client
    stream = tls.TLSStream(server, tls.server_context(cert_dir / "c.pem", cert_dir / "k.pem"), server_side=True)
    shake = threading.Thread(target=stream.handshake)
    shake.start()
    receiver = tls.TLSStream(client, tls.client_context(), server_side=False)
    receiver.handshake()
    shake.join()
    return stream, receiver


def seconds_per_frame(frame: bytes, use_tls: bool, cert_dir: Path, repeats: int) -> float:
    sender, receiver = pair(use_tls, cert_dir)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        writer = threading.Thread(target=sender.sendall, args=(frame,))
        writer.start()
        msg = protocol.recv_message(receiver, direction=protocol.SERVER_TO_CLIENT)
        writer.join()
        times.append(time.perf_counter() - t0)
        assert msg.type == "result"
    sender.close()
    receiver.close()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    frame = mesh_frame(args.faces)
    with tempfile.TemporaryDirectory() as tmp:
        cert_dir = Path(tmp)
        make_certificate(cert_dir / "c.pem", cert_dir / "k.pem", ["localhost"])
        plain = seconds_per_frame(frame, False, cert_dir, args.repeats)
        secure = seconds_per_frame(frame, True, cert_dir, args.repeats)
    mb = len(frame) / 1e6
    print(f"result frame: {args.faces} triangles with UVs, {mb:.1f} MB (median of {args.repeats}, send + receive + "
          f"decode)")
    print(f"plain TCP  {plain * 1e3:8.1f} ms  {mb / plain:7.0f} MB/s")
    print(f"TLS        {secure * 1e3:8.1f} ms  {mb / secure:7.0f} MB/s  ({secure / plain:.2f}x plain)")


if __name__ == "__main__":
    main()
