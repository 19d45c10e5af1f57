"""Result import into Blender: our wire protocol + ``foreach_set`` (A) against a GLB file + glTF importer (B).

What it measures, in one run: bringing a generated result (a triangle mesh of ``--faces`` triangles, default
1,000,000, with per-corner UVs, plus a ``--texture-size``² RGBA uint8 texture, default 1024²) into Blender (the
``bpy`` module), timed end to end from "the backend has the arrays in memory" to "a textured object exists in the
scene" (its image buffer loaded):

  A  ours: the backend encodes a ``result`` message and sends it over a real loopback TCP socket from a sender
     thread (``blender_addon.core.protocol.send_message``); the Blender side (main thread) receives it with
     ``protocol.recv_message`` and builds the object with the add-on's own result path,
     ``blender_addon.results.texture.apply_texture_result`` with no target object (= ``new_object_from_result`` +
     ``create_texture_image`` + ``make_texture_material`` + ``assign_material``), exactly what the add-on's
     session does when a ``result`` arrives.
  B  what other AI bridges do: the backend writes a GLB with ``backend.geometry.mesh.save_glb`` (trimesh) and Blender
     imports it with ``bpy.ops.import_scene.gltf(filepath=...)``.

The mesh is a torus built with numpy: ``R`` rings × ``C = 2R`` segments, ``F = 2·R·C`` triangles (1,000,000 for
R = 500), vertices shared across its seams, UVs from the (u, v) angles on an (R+1)×(C+1) grid, so the UV map has
seams and ``uv_idx != t_pos_idx`` (no xatlas). The texture is a seeded gradient + checker + noise.

Before every run of a path Blender is reset with ``bpy.ops.wm.read_factory_settings(use_empty=True)`` (not timed).
Both paths run once on a tiny mesh first (not counted: module imports, first-call costs), then ``--repeats``
times each, alternating A, B, A, B... After each run, outside the clock, the result is checked (assert): one new
mesh object with F triangles, corner positions equal to ``v_pos[t_pos_idx]`` (world frame, Z up), an active UV map
whose per-corner UVs equal ``uv[uv_idx]``, and a material image of the texture's size whose pixels equal the
texture. A broken path cannot report a fast time.

Run::

    .venv/bin/python benchmarks/bench_result_import.py                          # 1M triangles (from the repo root)
    .venv/bin/python benchmarks/bench_result_import.py --faces 20000 --repeats 1   # quick check
    .venv/bin/python benchmarks/bench_result_import.py --profile                  # + cProfile of A

Printout: one line per run, then the median over the repeats, in seconds, of each path's parts:
``backend`` (A: ``encode_message``; B: ``save_glb``, which includes the file write), ``transfer`` (A: from the
first byte handed to ``sendall`` to the last byte received; B: 0, the file is on the same disk and its read is part
of the import), ``blender`` (A: ``recv_message``'s decode/validation after the last byte + ``apply_texture_result``;
B: ``import_scene.gltf``) and ``total`` (end to end; for A the parts overlap slightly, so the total is measured,
not summed). Below the table: A's Blender side split into decode and build, and the time of ``save_glb``'s
``split_by_uv`` step alone (run once more, outside the clock), since it is a large share of B's backend side. Then
``B/A`` = median total of B / median total of A, against the project target of 10×. With
``--profile``, or automatically when B/A is under the target, path A is run once more under cProfile (Blender side:
receive + build; backend side: encode) and the top functions by own time are printed. Note that calls into
Blender's C API (``foreach_set``, ``mesh.update``, ``mesh.validate``, ``image.pack``...) are not separate entries
in cProfile: their time shows as the own time of the Python function that calls them.

The "INFO: ..." lines between the runs are the glTF importer's own log.

The machine may be shared with other work: numbers are noisy; compare medians, and runs of one invocation.
"""

from __future__ import annotations

import argparse
import atexit
import cProfile
import io
import os
import pstats
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

_BLENDER_USER = tempfile.mkdtemp(prefix="lf_bench_blender_user_")
atexit.register(shutil.rmtree, _BLENDER_USER, True)
if "bpy" not in sys.modules:  # keep Blender away from the user's own Blender folder (read once, on import)
    os.environ.setdefault("BLENDER_USER_RESOURCES", _BLENDER_USER)

import bpy  # noqa: E402
import numpy as np  # noqa: E402

from backend.geometry.mesh import save_glb, split_by_uv, TriMesh  # noqa: E402
from blender_addon.results import texture as texture_results  # noqa: E402
from blender_addon.core import arrays as lf_arrays  # noqa: E402
from blender_addon.core import protocol  # noqa: E402

JOB_ID = "bench0000result"


# ------------------------------------------------------------------------------------------------- test data

@dataclass
class Result:
    """A generated result as the backend holds it.

    Attributes:
        v_pos: (N,3) float32 vertex positions, Blender world frame (Z up), metres.
        t_pos_idx: (F,3) int32 vertex indices per triangle, counter-clockwise seen from outside.
        uv: (M,2) float32 texture coordinates in [0, 1], (0, 0) = bottom-left of the texture.
        uv_idx: (F,3) int32 indices into ``uv`` per triangle corner.
        texture: (H,W,C) uint8 sRGB texture, row 0 = top (V = 1), C = 3 or 4.
    """

    v_pos: np.ndarray
    t_pos_idx: np.ndarray
    uv: np.ndarray
    uv_idx: np.ndarray
    texture: np.ndarray

    def wire_arrays(self) -> dict[str, np.ndarray]:
        """The ``result`` message's arrays: ``mesh.v_pos``, ``mesh.t_pos_idx``, ``mesh.uv``, ``mesh.uv_idx``,
        ``texture``."""
        out = protocol.mesh_arrays("mesh", self.v_pos, self.t_pos_idx, self.uv, self.uv_idx)
        out["texture"] = self.texture
        return out


def make_torus(n_faces: int, major_radius: float = 1.0, minor_radius: float = 0.35) -> tuple[np.ndarray, ...]:
    """A closed torus around the Z axis with about ``n_faces`` triangles and a seamed (u, v) UV map.

    ``R = max(3, round(sqrt(n_faces / 4)))`` rings around the tube and ``C = 2R`` segments around Z give
    ``F = 2·R·C`` triangles and ``R·C`` vertices (shared across the seams); the UVs live on an (R+1)×(C+1) grid,
    u = segment / C, v = ring / R, so corners on a seam index other UVs than their neighbours across it.

    Args:
        n_faces: wanted triangle count (>= 1); the result is the nearest ``4·R²``.
        major_radius, minor_radius: torus radii, metres (major > minor > 0).

    Returns:
        ``v_pos`` (R·C, 3) float32 metres, ``t_pos_idx`` (F, 3) int32 (counter-clockwise seen from outside),
        ``uv`` ((R+1)(C+1), 2) float32 in [0, 1], ``uv_idx`` (F, 3) int32.

    Raises:
        ValueError: ``n_faces < 1`` or radii that do not make a ring torus.
    """
    if n_faces < 1:
        raise ValueError(f"n_faces must be >= 1, got {n_faces}")
    if not major_radius > minor_radius > 0:
        raise ValueError(f"need major_radius > minor_radius > 0, got {major_radius}, {minor_radius}")
    n_rings = max(3, int(round(np.sqrt(n_faces / 4.0))))
    n_segments = 2 * n_rings
    ring = np.arange(n_rings)  # index around the tube (v)
    seg = np.arange(n_segments)  # index around Z (u)
    ang_u = 2.0 * np.pi * seg / n_segments
    ang_v = 2.0 * np.pi * ring / n_rings
    rho = major_radius + minor_radius * np.cos(ang_v)[:, None]  # (R,1) distance from the Z axis
    v_pos = np.stack(np.broadcast_arrays(rho * np.cos(ang_u)[None, :], rho * np.sin(ang_u)[None, :],
                                         minor_radius * np.sin(ang_v)[:, None]), axis=-1)
    v_pos = np.ascontiguousarray(v_pos.reshape(-1, 3), dtype=np.float32)  # vertex (i, j) = i·C + j

    i, j = np.meshgrid(ring, seg, indexing="ij")
    i, j = i.reshape(-1), j.reshape(-1)
    i1, j1 = i + 1, j + 1

    def vid(a, b):
        return (a % n_rings) * n_segments + (b % n_segments)

    def uid(a, b):  # UV grid index, no wrap: the seam row/column are duplicated in UV space
        return a * (n_segments + 1) + b

    # quad (i,j) (i,j+1) (i+1,j+1) (i+1,j): +u then +v is counter-clockwise seen from outside
    t_pos_idx = np.concatenate([np.stack([vid(i, j), vid(i, j1), vid(i1, j1)], axis=1),
                                np.stack([vid(i, j), vid(i1, j1), vid(i1, j)], axis=1)]).astype(np.int32)
    uv_idx = np.concatenate([np.stack([uid(i, j), uid(i, j1), uid(i1, j1)], axis=1),
                             np.stack([uid(i, j), uid(i1, j1), uid(i1, j)], axis=1)]).astype(np.int32)
    gu, gv = np.meshgrid(np.arange(n_segments + 1) / n_segments, np.arange(n_rings + 1) / n_rings)
    uv = np.stack([gu.reshape(-1), gv.reshape(-1)], axis=1).astype(np.float32)
    return v_pos, t_pos_idx, uv, uv_idx


def make_texture(size: int, channels: int, seed: int = 0) -> np.ndarray:
    """(size, size, channels) uint8 texture, channels 3 or 4: RGB gradients + a 16-cell checker + seeded noise;
    alpha 255. Raises ValueError for other channel counts or size < 1."""
    if channels not in (3, 4) or size < 1:
        raise ValueError(f"need channels in (3, 4) and size >= 1, got channels={channels}, size={size}")
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    checker = ((np.floor(x * 16) + np.floor(y * 16)) % 2).astype(np.float32)
    rgb = np.stack([x, y, 0.25 + 0.5 * checker], axis=-1) * 220.0 + rng.integers(0, 32, (size, size, 3))
    tex = np.full((size, size, channels), 255, dtype=np.uint8)
    tex[..., :3] = np.clip(rgb, 0, 255).astype(np.uint8)
    return tex


def make_result(n_faces: int, texture_size: int, channels: int, seed: int) -> Result:
    """The benchmark's result: :func:`make_torus` with ``n_faces`` + :func:`make_texture`."""
    v_pos, t_pos_idx, uv, uv_idx = make_torus(n_faces)
    return Result(v_pos, t_pos_idx, uv, uv_idx, make_texture(texture_size, channels, seed))


# ------------------------------------------------------------------------------------------------- the paths

@dataclass
class Timing:
    """Seconds of one run of one path (``decode``/``build`` split A's Blender side; 0 for B)."""

    backend: float
    transfer: float
    blender: float
    total: float
    decode: float = 0.0
    build: float = 0.0


class _SendClock:
    """Socket wrapper for the backend side: remembers when ``sendall`` was entered (= encoding is done)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.t_sendall: float | None = None

    def sendall(self, data) -> None:
        self.t_sendall = time.perf_counter()
        self.sock.sendall(data)


class _RecvClock:
    """Socket wrapper for the Blender side: remembers when the last ``recv_into`` returned (= last byte in)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.t_last: float | None = None

    def recv_into(self, buffer, nbytes: int = 0) -> int:
        n = self.sock.recv_into(buffer, nbytes)
        self.t_last = time.perf_counter()
        return n


def reset_blender() -> None:
    """An empty factory scene (no objects, meshes, images, materials from earlier runs)."""
    bpy.ops.wm.read_factory_settings(use_empty=True)


def run_ours(res: Result, profiler: cProfile.Profile | None = None) -> tuple[Timing, bpy.types.Object]:
    """Path A, once: encode + loopback TCP + ``recv_message`` + ``results.texture.apply_texture_result``.

    The connection is made before the clock starts (the add-on keeps one open). ``profiler``, if given, profiles
    the Blender side (main thread: receive, decode, build).
    """
    reset_blender()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        blender_sock = socket.create_connection(listener.getsockname())
        backend_sock, _ = listener.accept()
    arrays = res.wire_arrays()
    fields = {"job_id": JOB_ID, "metadata": {"pipeline": "latent_paint", "prompt": "benchmark", "seed": 0}}
    send_clock, recv_clock = _SendClock(backend_sock), _RecvClock(blender_sock)
    go = threading.Event()
    clock: dict[str, float] = {}
    errors: list[BaseException] = []

    def backend() -> None:
        go.wait()
        clock["t0"] = time.perf_counter()  # the backend has the arrays in memory
        try:
            protocol.send_message(send_clock, "result", fields, arrays)
        except BaseException as err:  # noqa: BLE001 — surfaced on the main thread
            errors.append(err)
            backend_sock.close()

    sender = threading.Thread(target=backend, name="bench-backend", daemon=True)
    sender.start()
    try:
        if profiler is not None:
            profiler.enable()
        go.set()
        msg = protocol.recv_message(recv_clock, direction=protocol.SERVER_TO_CLIENT)
        t_decoded = time.perf_counter()
        report = texture_results.apply_texture_result(bpy.context, msg.fields["job_id"], msg.arrays,
                                                      msg.fields["metadata"], None)
        _ = tuple(report.image.size)  # image buffer loaded
        t_end = time.perf_counter()
        if profiler is not None:
            profiler.disable()
    finally:
        sender.join(timeout=60)
        blender_sock.close()
        backend_sock.close()
    if errors:
        raise RuntimeError(f"backend sender failed: {errors[0]!r}") from errors[0]
    t0, t_sent, t_last = clock["t0"], send_clock.t_sendall, recv_clock.t_last
    timing = Timing(backend=t_sent - t0, transfer=t_last - t_sent, blender=t_end - t_last, total=t_end - t0,
                    decode=t_decoded - t_last, build=t_end - t_decoded)
    return timing, report.obj


def run_glb(res: Result, workdir: Path) -> tuple[Timing, bpy.types.Object]:
    """Path B, once: ``backend.geometry.mesh.save_glb`` to a file, then ``bpy.ops.import_scene.gltf`` of that file."""
    reset_blender()
    path = workdir / "result.glb"
    path.unlink(missing_ok=True)
    before = set(bpy.data.objects)
    t0 = time.perf_counter()
    save_glb(path, TriMesh(res.v_pos, res.t_pos_idx, res.uv, res.uv_idx), res.texture)
    t1 = time.perf_counter()
    status = bpy.ops.import_scene.gltf(filepath=str(path))
    new = [o for o in bpy.data.objects if o not in before and o.type == "MESH"]
    for obj in new:  # image buffers loaded, as in path A
        for image in _material_images(obj):
            _ = tuple(image.size)
    t2 = time.perf_counter()
    if status != {"FINISHED"}:
        raise RuntimeError(f"import_scene.gltf returned {status}")
    if len(new) != 1:
        raise AssertionError(f"the glTF import made {len(new)} mesh objects, expected 1")
    return Timing(backend=t1 - t0, transfer=0.0, blender=t2 - t1, total=t2 - t0), new[0]


# ------------------------------------------------------------------------------------------------- checks

def _material_images(obj: bpy.types.Object) -> list[bpy.types.Image]:
    images = []
    for slot in obj.material_slots:
        mat = slot.material
        if mat is not None and mat.node_tree is not None:
            images += [n.image for n in mat.node_tree.nodes if n.bl_idname == "ShaderNodeTexImage" and n.image]
    return images


def check_result(obj: bpy.types.Object, res: Result, path: str) -> None:
    """Assert that ``obj`` is the result: F triangles with the right corner positions (world frame) and UVs, and
    a material image equal to the texture. Raises AssertionError naming the path and what differs."""
    mesh = obj.data
    n_faces = res.t_pos_idx.shape[0]
    assert obj.type == "MESH", f"{path}: {obj.name!r} is a {obj.type}"
    assert len(mesh.polygons) == n_faces, f"{path}: {len(mesh.polygons)} faces, expected {n_faces}"
    assert len(mesh.loops) == 3 * n_faces, f"{path}: {len(mesh.loops)} loops, expected {3 * n_faces} (triangles)"

    loop_vertex = np.empty(len(mesh.loops), dtype=np.int32)
    mesh.loops.foreach_get("vertex_index", loop_vertex)
    co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
    mesh.vertices.foreach_get("co", co)
    world = lf_arrays.transform_points(co.reshape(-1, 3), np.array(obj.matrix_world, dtype=np.float64))
    corner_pos = world[loop_vertex]
    expected_pos = res.v_pos[res.t_pos_idx.reshape(-1)]
    err = float(np.abs(corner_pos - expected_pos).max())
    assert err < 1e-5, f"{path}: corner positions differ from v_pos[t_pos_idx] by up to {err:.3g} m"

    layer = mesh.uv_layers.active
    assert layer is not None, f"{path}: {obj.name!r} has no UV map"
    corner_uv = np.empty(len(mesh.loops) * 2, dtype=np.float32)
    layer.uv.foreach_get("vector", corner_uv)
    err = float(np.abs(corner_uv.reshape(-1, 2) - res.uv[res.uv_idx.reshape(-1)]).max())
    assert err < 1e-5, f"{path}: UV map {layer.name!r} differs from uv[uv_idx] by up to {err:.3g}"

    images = _material_images(obj)
    assert len(images) == 1, f"{path}: {len(images)} material images on {obj.name!r}, expected 1"
    image = images[0]
    h, w = res.texture.shape[:2]
    assert tuple(image.size) == (w, h), f"{path}: image {image.name!r} is {tuple(image.size)}, expected {(w, h)}"
    pixels = np.empty(w * h * 4, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    got = lf_arrays.pixels_to_texture(pixels, w, h)[..., : res.texture.shape[2]]
    err = int(np.abs(got.astype(np.int16) - res.texture.astype(np.int16)).max())
    assert err <= 1, f"{path}: image pixels differ from the texture by up to {err}/255"


# ------------------------------------------------------------------------------------------------- report

def _profile_report(prof: cProfile.Profile, title: str, top: int) -> str:
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    start = next((k for k, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    return f"--- cProfile: {title} (top {top} by own time, seconds) ---\n" + "\n".join(lines[start:])


def profile_ours(res: Result, top: int) -> None:
    """Run path A once more under cProfile (not counted) and print the hot spots of each side."""
    prof_backend = cProfile.Profile()
    prof_backend.enable()
    frame = protocol.encode_message("result", {"job_id": JOB_ID, "metadata": {}}, res.wire_arrays())
    prof_backend.disable()
    del frame
    prof_blender = cProfile.Profile()
    timing, obj = run_ours(res, prof_blender)
    check_result(obj, res, "A (profiled)")
    print(f"\nprofiled run of A: total {timing.total:.3f} s (decode {timing.decode:.3f}, build {timing.build:.3f})")
    print(_profile_report(prof_backend, "A backend side, encode_message", top))
    print(_profile_report(prof_blender, "A Blender side, recv_message + apply_texture_result", top))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=1_000_000, help="triangles of the result mesh (nearest 4·R²)")
    ap.add_argument("--texture-size", type=int, default=1024, help="texture height = width, pixels")
    ap.add_argument("--channels", type=int, choices=(3, 4), default=4, help="texture channels (RGB or RGBA)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each path (median reported)")
    ap.add_argument("--target", type=float, default=10.0, help="wanted B/A ratio; below it path A is profiled")
    ap.add_argument("--profile", action="store_true", help="profile path A even when the target is met")
    ap.add_argument("--top", type=int, default=15, help="functions listed per cProfile report")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")

    t = time.perf_counter()
    res = make_result(args.faces, args.texture_size, args.channels, args.seed)
    frame_mb = len(protocol.encode_message("result", {"job_id": JOB_ID, "metadata": {}}, res.wire_arrays())) / 1e6
    print(f"result: {res.t_pos_idx.shape[0]:,} triangles, {res.v_pos.shape[0]:,} vertices, {res.uv.shape[0]:,} uvs, "
          f"texture {'x'.join(map(str, res.texture.shape))} uint8; protocol frame {frame_mb:.1f} MB "
          f"(made in {time.perf_counter() - t:.1f} s)")
    print(f"bpy {bpy.app.version_string}, numpy {np.__version__}, {os.cpu_count()} CPUs")

    with tempfile.TemporaryDirectory(prefix="lf_bench_glb_") as tmp:
        workdir = Path(tmp)
        warm = make_result(2000, 64, args.channels, args.seed)
        for name, fn in (("A", lambda r: run_ours(r)), ("B", lambda r: run_glb(r, workdir))):
            _, obj = fn(warm)
            check_result(obj, warm, f"{name} (warm-up)")

        runs: dict[str, list[Timing]] = {"A": [], "B": []}
        for rep in range(args.repeats):
            for name in ("A", "B"):
                timing, obj = run_ours(res) if name == "A" else run_glb(res, workdir)
                check_result(obj, res, name)
                runs[name].append(timing)
                extra = (f"  (decode {timing.decode:.3f} + build {timing.build:.3f})" if name == "A"
                         else f"  (GLB {(workdir / 'result.glb').stat().st_size / 1e6:.1f} MB)")
                print(f"run {rep + 1} {name}: backend {timing.backend:7.3f}  transfer {timing.transfer:7.3f}  "
                      f"blender {timing.blender:7.3f}  total {timing.total:7.3f} s{extra}", flush=True)
        reset_blender()

    med = {name: Timing(*(statistics.median(getattr(t, f) for t in ts)
                          for f in ("backend", "transfer", "blender", "total", "decode", "build")))
           for name, ts in runs.items()}
    labels = {"A": "A ours: protocol over TCP + foreach_set", "B": "B GLB: save_glb + import_scene.gltf"}
    print(f"\nmedian of {args.repeats} run(s), seconds{'':14s}backend  transfer   blender     total")
    for name in ("A", "B"):
        m = med[name]
        print(f"{labels[name]:45s}{m.backend:8.3f}  {m.transfer:8.3f}  {m.blender:8.3f}  {m.total:8.3f}")
    print(f"A Blender side = decode {med['A'].decode:.3f} + build (apply_texture_result) {med['A'].build:.3f}")
    ratio = med["B"].total / med["A"].total
    verdict = "met" if ratio >= args.target else "NOT met"
    t = time.perf_counter()
    split_by_uv(TriMesh(res.v_pos, res.t_pos_idx, res.uv, res.uv_idx))
    print(f"B backend side includes save_glb's split_by_uv (one vertex per (vertex, uv) pair for glTF): "
          f"{time.perf_counter() - t:.3f} s when run alone")
    print(f"B/A = {ratio:.1f}x  (target >= {args.target:g}x: {verdict})")

    if args.profile or ratio < args.target:
        profile_ours(res, args.top)
        reset_blender()


if __name__ == "__main__":
    main()
