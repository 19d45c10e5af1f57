#!/usr/bin/env python3
"""LatentForge set-up: one command that makes a working install (stdlib only, Python 3.10+).

    python install.py [--dev] [--studio] [--venv PATH] [--device auto|cuda|cpu] [--blender PATH | --no-blender] ...

Steps (each reported as done / skipped / failed in the final summary):

1. virtualenv   create ``<repo>/.venv`` (or ``--venv``); reuse it when its python runs, recreate it when not.
2. packages     one ``pip install`` per group: torch, backend libraries, nvdiffrast (CUDA only), dev tools,
                bpy (``--dev``, Python 3.11 only), test data (``--dev``, ``--no-deps``), Ray (``--studio`` or
                ``--dev``: the executor of ``serve --executor ray``).
3. .pth file    puts the repo root on the venv's ``sys.path`` (``python -m backend`` works from anywhere).
4. token/config the socket token (kept; ``--new-token`` rotates it) and ``config.json`` in the LatentForge home;
                with ``--tls`` also the backend's self-signed TLS certificate (kept once made), its fingerprint printed.
5. extension    ``dist/<id>-<version>.zip`` from ``blender_addon/`` (files at the zip root).
6. Blender      ``blender --command extension install-file -r user_default -e <zip>``.
7. verify       imports the main packages with the venv's python, prints versions and CUDA availability.

Running it again repairs what is missing and changes nothing else: the venv is reused, pip finds everything
satisfied, the token is kept and config values the user set are preserved.
Importing this module has no side effects (the tests import it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import venv
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

# ----------------------------------------------------------------------------------------------------------------------
# Version constraints (one place; pip receives exactly these strings).

MIN_PYTHON = (3, 10)
# torch and torchvision are one pair, exact on purpose. PyPI's torchvision wheels link PyPI's default torch build (CUDA
# on Linux x86-64, which also runs on CPU-only machines), so the pair is installed everywhere, CPU machines included:
# without a matching torchvision neither open_clip nor dalle2-pytorch (the CLIP-Mesh prior) can import. The price on
# a CPU-only machine is the CUDA libraries' disk space: about 4.6 GB in the venv (README, Set up).
TORCH_SPEC = "torch==2.14.1"
TORCHVISION_SPEC = "torchvision==0.29.1"
NUMPY_SPEC = "numpy<2"
# Not a requirement of ours: dalle2-pytorch pulls it in (through embedding-reader) and Ray imports it when present.
# pyarrow 26 refuses to import beside NumPy 1.x, so the constraints file keeps it below 26 (25 was checked).
PYARROW_CONSTRAINT = "pyarrow<26"
BACKEND_REQUIREMENTS = (
    "diffusers",
    "transformers",
    "safetensors",
    "huggingface_hub",
    "accelerate",
    "PyMCubes",
    "fast-simplification",  # quadric decimation of extracted meshes (backend/geometry/extract.py)
    "xatlas",
    "trimesh",
    "pygltflib",
    "libigl",
    "Pillow",
    "tqdm",
    "scipy",
    "cryptography",  # serve --tls: makes the self-signed certificate (backend/serving/certificates.py)
    "open_clip_torch>=2.24,<3",  # CLIP guidance (CLIP-Mesh, Dream Fields); <3 because dalle2-pytorch asks for it
    "dalle2-pytorch==1.15.6",  # the CLIP-Mesh diffusion prior (text embedding -> image embedding)
    "kornia",  # differentiable image augmentations (CLIP guidance)
    "peft",  # LoRA adapters (ProlificDreamer's VSD)
    "point-cloud-utils",  # Chamfer / EMD distances (LION, the 1-NNA metric)
)
CUDA_REQUIREMENTS = ("diffrp-nvdiffrast",)  # provides the module `nvdiffrast`; NVIDIA Source Code License
DEV_REQUIREMENTS = ("pytest", "pytest-timeout")
STUDIO_REQUIREMENTS = ("ray",)  # `serve --executor ray`: jobs on Ray actors, one per GPU (the tests run a local cluster)
BPY_SPEC = "bpy>=5.0,<5.1"  # Blender as a Python module, for the add-on tests
BPY_PYTHON = (3, 11)  # the bpy 5.0 wheels exist for CPython 3.11 only
TEST_DATA_REQUIREMENTS = ("pyvista==0.49.1",)  # --no-deps: only its bundled example meshes are read, never imported
BLENDER_MIN_VERSION = (4, 2)  # extensions (blender_manifest.toml) exist since Blender 4.2
BLENDER_REPO = "user_default"  # Blender's built-in local user repository for extensions

REPO_ROOT = Path(__file__).resolve().parent
ADDON_DIR = REPO_ROOT / "blender_addon"
DIST_DIR = REPO_ROOT / "dist"
PTH_NAME = "latentforge.pth"
ZIP_EXCLUDED_DIRS = frozenset({"__pycache__"})
ZIP_EXCLUDED_SUFFIXES = (".pyc", ".pyo")
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same sources give a byte-identical zip

IS_WINDOWS = os.name == "nt"


class InstallError(RuntimeError):
    """A step failed in a way the user has to fix; the message says what and how."""


# ----------------------------------------------------------------------------------------------------------------------
# Shared helpers from the add-on (loaded by file path so that no package __init__ runs here).


@lru_cache(maxsize=None)
def paths_module():
    """The add-on's ``blender_addon/core/paths.py`` module (home, token and config helpers), loaded by file path."""
    path = ADDON_DIR / "core" / "paths.py"
    spec = importlib.util.spec_from_file_location("_latentforge_install_paths", path)
    if spec is None or spec.loader is None:
        raise InstallError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------------------------------
# Arguments


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``install.py`` (see the module docstring)."""
    paths = paths_module()
    p = argparse.ArgumentParser(
        prog="install.py",
        description="Set up LatentForge: virtualenv + backend packages, token/config, Blender extension.",
    )
    p.add_argument("--venv", type=Path, default=REPO_ROOT / ".venv",
                   help="virtualenv folder (default: <repo>/.venv); created, reused or repaired")
    p.add_argument("--torch-spec", default=TORCH_SPEC,
                   help=f"pip requirement for torch, name and version (default: {TORCH_SPEC!r}); it also "
                        "constrains every later pip call, so no package can swap torch")
    p.add_argument("--torchvision-spec", default=TORCHVISION_SPEC,
                   help=f"pip requirement for torchvision, the one that matches --torch-spec (default: "
                        f"{TORCHVISION_SPEC!r}); pinned like torch")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto: CUDA extras (nvdiffrast) only when `nvidia-smi` runs; cuda/cpu force it")
    p.add_argument("--dev", action="store_true",
                   help="also install pytest, pytest-timeout, bpy (Blender as a module) and test data")
    p.add_argument("--studio", action="store_true",
                   help="also install Ray, for `serve --executor ray` (jobs on the GPUs of several machines); --dev "
                        "installs it too")
    p.add_argument("--host", default=None,
                   help=f"backend host to record in the config (default: keep the config's, else {paths.DEFAULT_HOST})")
    p.add_argument("--port", type=_port, default=None,
                   help=f"backend port to record in the config (default: keep the config's, else {paths.DEFAULT_PORT})")
    p.add_argument("--home", type=Path, default=None,
                   help="LatentForge home folder (token, config, data); sets LATENTFORGE_HOME for this run")
    p.add_argument("--new-token", action="store_true", help="replace the existing token with a fresh one")
    p.add_argument("--tls", action="store_true",
                   help="also make the backend's TLS certificate (for `serve --tls`) and print its fingerprint")
    p.add_argument("--tls-host", action="append", default=[], metavar="NAME",
                   help="--tls: a host name or IP address the certificate names (repeatable)")
    p.add_argument("--blender", type=Path, default=None, help="Blender executable (default: `blender` on PATH)")
    p.add_argument("--no-blender", action="store_true", help="do not install the extension into Blender")
    p.add_argument("-q", "--quiet", action="store_true", help="quiet pip")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (default ``sys.argv[1:]``). ``host``/``port``/``home`` are ``None`` unless given."""
    args = build_parser().parse_args(argv)
    if args.no_blender and args.blender is not None:
        build_parser().error("--blender and --no-blender contradict each other")
    if args.tls_host and not args.tls:
        build_parser().error("--tls-host needs --tls")
    return args


# ----------------------------------------------------------------------------------------------------------------------
# Step results and subprocess helpers


@dataclass
class Step:
    """One line of the summary: ``status`` is ``done``, ``skipped`` or ``failed``."""

    name: str
    status: str
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Report:
    """All step results of one run, in order."""

    steps: list[Step] = field(default_factory=list)

    def add(self, name: str, status: str, detail: str = "", seconds: float = 0.0) -> Step:
        if status not in ("done", "skipped", "failed"):
            raise ValueError(f"step status must be done/skipped/failed, got {status!r}")
        step = Step(name, status, detail, seconds)
        self.steps.append(step)
        mark = {"done": "OK", "skipped": "--", "failed": "!!"}[status]
        print(f"[{mark}] {name}: {status}" + (f" ({detail})" if detail else "") + f"  [{seconds:.1f}s]", flush=True)
        return step

    @property
    def failed(self) -> bool:
        return any(s.status == "failed" for s in self.steps)


def heading(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def run_capture(cmd: list[str], timeout: float | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` without a shell, stdin closed, capturing text output (never raises on a non-zero exit)."""
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout, cwd=cwd)


# ----------------------------------------------------------------------------------------------------------------------
# 1. Virtualenv


def venv_python(venv_dir: Path, windows: bool = IS_WINDOWS) -> Path:
    """The interpreter inside ``venv_dir``: ``Scripts/python.exe`` on Windows, ``bin/python`` elsewhere."""
    return venv_dir / ("Scripts/python.exe" if windows else "bin/python")


def python_works(python: Path, need_pip: bool = True) -> bool:
    """True if ``python`` starts (and, with ``need_pip``, can import pip)."""
    if not python.exists():
        return False
    code = "import pip" if need_pip else "pass"
    try:
        return run_capture([str(python), "-c", code], timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_venv(venv_dir: Path, with_pip: bool = True) -> str:
    """Create ``venv_dir`` with the running interpreter, or reuse it, or recreate it when its python is broken.

    Returns:
        ``"created"``, ``"reused"`` or ``"repaired"``.

    Raises:
        InstallError: ``venv_dir`` exists, is not empty and is not a virtualenv (no ``pyvenv.cfg``): it is never
        wiped, the user has to pick another ``--venv``.
    """
    venv_dir = venv_dir.absolute()
    python = venv_python(venv_dir)
    if venv_dir.exists():
        if not venv_dir.is_dir():
            raise InstallError(f"--venv {venv_dir} exists and is not a folder")
        if any(venv_dir.iterdir()) and not (venv_dir / "pyvenv.cfg").exists():
            raise InstallError(f"--venv {venv_dir} is a non-empty folder without pyvenv.cfg (not a virtualenv); "
                               "refusing to overwrite it, choose another --venv")
        if (venv_dir / "pyvenv.cfg").exists():
            if python_works(python, need_pip=with_pip):
                return "reused"
            outcome = "repaired"
        else:
            outcome = "created"
    else:
        outcome = "created"
    builder = venv.EnvBuilder(clear=True, with_pip=with_pip, symlinks=not IS_WINDOWS)
    builder.create(str(venv_dir))
    if not python_works(python, need_pip=with_pip):
        raise InstallError(f"created {venv_dir} but its python {python} does not run")
    return outcome


def venv_info(python: Path) -> dict:
    """``{"version": [major, minor, micro], "purelib": site-packages path}`` of the venv's interpreter."""
    code = ("import json, sys, sysconfig; "
            "print(json.dumps({'version': list(sys.version_info[:3]), 'purelib': sysconfig.get_paths()['purelib']}))")
    proc = run_capture([str(python), "-c", code], timeout=120)
    if proc.returncode != 0:
        raise InstallError(f"{python} failed to report its version:\n{proc.stdout}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------------------
# 2. Packages


def cuda_present(device: str, platform: str = sys.platform) -> bool:
    """Whether to install the CUDA extras: ``device`` ``"cuda"``/``"cpu"`` decide; ``"auto"`` runs ``nvidia-smi``.
    macOS never has them (Apple Silicon computes on MPS with the torch rasterizer; there is no CUDA on macOS).

    Raises:
        ValueError: an unknown ``device``. InstallError: ``"cuda"`` on macOS.
    """
    if platform == "darwin":
        if device == "cuda":
            raise InstallError("--device cuda: there is no CUDA on macOS (Apple Silicon uses MPS, chosen automatically)")
        return False
    if device in ("cuda", "cpu"):
        return device == "cuda"
    if device != "auto":
        raise ValueError(f"device must be auto/cuda/cpu, got {device!r}")
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        return run_capture([exe], timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class PipGroup:
    """One ``pip install`` call; ``skip_reason`` set means it is reported as skipped instead of run."""

    name: str
    requirements: tuple[str, ...]
    no_deps: bool = False
    skip_reason: str = ""


def plan_pip_groups(torch_spec: str, cuda: bool, dev: bool, python_version: tuple[int, ...],
                    studio: bool = False, torchvision_spec: str = TORCHVISION_SPEC) -> list[PipGroup]:
    """The pip groups to install, in order, for this machine and these flags (``studio`` or ``dev``: Ray)."""
    groups = [
        PipGroup("torch", (torch_spec, torchvision_spec, NUMPY_SPEC)),
        PipGroup("backend libraries", (NUMPY_SPEC, *BACKEND_REQUIREMENTS)),
        PipGroup("nvdiffrast (CUDA rasterizer)", CUDA_REQUIREMENTS,
                 skip_reason="" if cuda else "no CUDA (nvidia-smi not found or failing; force with --device cuda)"),
    ]
    if dev:
        groups.append(PipGroup("dev tools", DEV_REQUIREMENTS))
        py = tuple(python_version[:2])
        bpy_skip = "" if py == BPY_PYTHON else (
            f"bpy {BPY_SPEC!r} needs Python {BPY_PYTHON[0]}.{BPY_PYTHON[1]}, the venv has "
            f"{py[0]}.{py[1]}; re-run install.py with a Python {BPY_PYTHON[0]}.{BPY_PYTHON[1]} interpreter "
            "(and a new --venv) to run the Blender tests")
        groups.append(PipGroup("bpy (Blender as a module)", (BPY_SPEC,), skip_reason=bpy_skip))
        groups.append(PipGroup("test data (pyvista wheel, no deps)", TEST_DATA_REQUIREMENTS, no_deps=True))
    if studio or dev:
        groups.append(PipGroup("Ray (studio executor)", STUDIO_REQUIREMENTS))
    return groups


def write_constraints(venv_dir: Path, torch_spec: str, torchvision_spec: str = TORCHVISION_SPEC) -> Path:
    """Write the pip constraints file that pins torch, torchvision and numpy for every group (so no group can swap
    them), and keeps pyarrow where NumPy 1.x can import it (:data:`PYARROW_CONSTRAINT`)."""
    path = venv_dir / "latentforge-constraints.txt"
    path.write_text(f"{torch_spec}\n{torchvision_spec}\n{NUMPY_SPEC}\n{PYARROW_CONSTRAINT}\n", encoding="utf-8")
    return path


def pip_command(python: Path, group: PipGroup, constraints: Path | None, quiet: bool) -> list[str]:
    """The argv of the ``pip install`` call for ``group``."""
    cmd = [str(python), "-m", "pip", "install"]
    if quiet:
        cmd.append("-q")
    if group.no_deps:
        cmd.append("--no-deps")
    if constraints is not None:
        cmd += ["-c", str(constraints)]
    return cmd + list(group.requirements)


def pip_install(python: Path, group: PipGroup, constraints: Path | None, quiet: bool) -> None:
    """Run pip for ``group`` with its output going to the terminal.

    Raises:
        InstallError: pip exited non-zero.
    """
    cmd = pip_command(python, group, constraints, quiet)
    print("$ " + " ".join(cmd), flush=True)
    rc = subprocess.run(cmd, stdin=subprocess.DEVNULL).returncode
    if rc != 0:
        raise InstallError(f"pip failed (exit {rc}) installing {group.name}: {' '.join(group.requirements)}; "
                           "see pip's output above")


# ----------------------------------------------------------------------------------------------------------------------
# 3. .pth file


def write_pth(site_packages: Path, repo_root: Path = REPO_ROOT) -> Path:
    """Write ``<site_packages>/latentforge.pth`` holding the absolute ``repo_root`` (one line); returns its path.

    Python's ``site`` module appends each existing directory named in a ``.pth`` file to ``sys.path``.
    """
    repo_root = Path(repo_root).resolve()
    if not repo_root.is_dir():
        raise InstallError(f"repo root {repo_root} is not a folder")
    site_packages = Path(site_packages)
    site_packages.mkdir(parents=True, exist_ok=True)
    path = site_packages / PTH_NAME
    path.write_text(str(repo_root) + "\n", encoding="utf-8")
    return path


def install_command(python: Path, quiet: bool) -> Path:
    """Install the repository in editable mode without dependencies or downloads (``pip install --no-deps
    --no-build-isolation --no-index -e <repo>``), which makes the ``latentforge`` command of ``pyproject.toml``.

    Returns:
        The command's path in the venv (``bin/latentforge``, ``Scripts/latentforge.exe`` on Windows).

    Raises:
        InstallError: pip failed (its output is on the terminal).
    """
    cmd = [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-e", str(REPO_ROOT)]
    if quiet:
        cmd.append("-q")
    print("$ " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd)
    if rc != 0:
        raise InstallError(f"pip failed (exit {rc}) installing the latentforge command; python -m backend still works")
    return python.parent / ("latentforge.exe" if IS_WINDOWS else "latentforge")


def tls_certificate(python: Path, hosts: list[str], neutral_cwd: Path) -> tuple[str, str]:
    """Make the backend's TLS certificate in the LatentForge home with the venv's python (``-m backend tls make``;
    an existing one is kept). Returns ``("made" | "kept", fingerprint)``.

    Raises:
        InstallError: the backend could not make or read it (its message).
    """
    paths = paths_module()
    made = not paths.tls_cert_path().exists()
    cmd = [str(python), "-m", "backend", "tls", "make" if made else "fingerprint"]
    for host in hosts if made else ():
        cmd += ["--tls-host", host]
    proc = run_capture(cmd, timeout=300, cwd=neutral_cwd)
    found = re.search(r"SHA-256 fingerprint: ([0-9A-F:]{95})", proc.stdout)
    if proc.returncode != 0 or not found:
        raise InstallError(f"could not {'make' if made else 'read'} the TLS certificate: {proc.stdout.strip()[-500:]}")
    return ("made" if made else "kept"), found.group(1)


# ----------------------------------------------------------------------------------------------------------------------
# 4. Token and config


def read_manifest(manifest_path: Path) -> dict:
    """The top-level keys of a ``blender_manifest.toml`` (``tomllib`` on 3.11+, a string-key reader on 3.10).

    Raises:
        InstallError: the file is missing or lacks ``id``/``version``.
    """
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InstallError(f"extension manifest not found: {manifest_path}") from None
    try:
        import tomllib  # Python 3.11+
        data = tomllib.loads(text)
    except ModuleNotFoundError:
        data = {}
        for line in text.splitlines():
            if line.lstrip().startswith("["):
                break  # only the top-level table is needed
            m = re.match(r'^\s*([A-Za-z_][\w-]*)\s*=\s*"([^"]*)"\s*(#.*)?$', line)
            if m:
                data[m.group(1)] = m.group(2)
    for key in ("id", "version"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise InstallError(f"{manifest_path} has no string {key!r}")
    return data


def resolve_config(existing: dict, *, python: Path, repo_root: Path, version: str, host: str | None,
                   port: int | None, data_dir: Path, home: Path | None) -> dict:
    """Merge the install facts into ``existing`` (the current config.json).

    ``python``, ``repo_root`` and ``version`` always describe this install. ``host``/``port`` replace the stored
    values only when given (``None`` keeps them, else the defaults); ``data_dir`` is kept when already set; keys
    this installer does not know are kept. ``home`` (``--home``) is recorded as ``"home"`` when given.
    """
    paths = paths_module()
    config = dict(existing)
    config["python"] = str(Path(python).absolute())
    config["repo_root"] = str(Path(repo_root).resolve())
    config["version"] = version
    if host is not None:
        config["host"] = host
    config.setdefault("host", paths.DEFAULT_HOST)
    if port is not None:
        config["port"] = int(port)
    config.setdefault("port", paths.DEFAULT_PORT)
    config.setdefault("data_dir", str(data_dir))
    if home is not None:
        config["home"] = str(Path(home).absolute())
    return config


def configure_home(*, python: Path, version: str, host: str | None = None, port: int | None = None,
                   new_token: bool = False, home: Path | None = None, repo_root: Path = REPO_ROOT) -> dict:
    """Write the token and config.json into the LatentForge home (``$LATENTFORGE_HOME`` or the platform default).

    ``home`` given: ``LATENTFORGE_HOME`` is set to it for this process first (so child processes see it too).
    The token is kept unless ``new_token``; it is created with mode 0600 when missing.

    Returns:
        ``{"home", "token_path", "config_path", "token": "created"|"kept"|"rotated", "config": dict}``.
    """
    paths = paths_module()
    if home is not None:
        os.environ["LATENTFORGE_HOME"] = str(Path(home).expanduser().absolute())
    token_file = paths.token_path()
    rotate = new_token and token_file.exists()
    if rotate:
        token_file.unlink()
    _, created = paths.ensure_token(token_file)
    token_state = "rotated" if rotate else ("created" if created else "kept")
    config = resolve_config(paths.read_config(), python=python, repo_root=repo_root, version=version, host=host,
                            port=port, data_dir=paths.default_data_dir(), home=home)
    config_file = paths.write_config(config)
    return {"home": paths.home_dir(), "token_path": token_file, "config_path": config_file, "token": token_state,
            "config": config}


# ----------------------------------------------------------------------------------------------------------------------
# 5. Extension zip


def addon_files(addon_dir: Path) -> list[Path]:
    """Files of the add-on to pack, relative to ``addon_dir``, sorted; skips ``__pycache__``, ``*.pyc`` and dotfiles."""
    files = []
    for path in sorted(addon_dir.rglob("*")):
        rel = path.relative_to(addon_dir)
        if not path.is_file():
            continue
        if any(part in ZIP_EXCLUDED_DIRS or part.startswith(".") for part in rel.parts):
            continue
        if path.suffix in ZIP_EXCLUDED_SUFFIXES:
            continue
        files.append(rel)
    return files


def build_extension_zip(out_dir: Path, addon_dir: Path = ADDON_DIR) -> Path:
    """Pack ``addon_dir`` into ``<out_dir>/<id>-<version>.zip`` (``id``/``version`` from its blender_manifest.toml).

    The add-on's files sit at the zip root (``blender_manifest.toml``, ``__init__.py``, ``core/...``), as Blender's
    "Install from Disk" expects. Timestamps are fixed, so the same sources give a byte-identical zip.

    Raises:
        InstallError: the manifest or the add-on's ``__init__.py`` is missing.
    """
    addon_dir = Path(addon_dir)
    manifest = read_manifest(addon_dir / "blender_manifest.toml")
    if not (addon_dir / "__init__.py").is_file():
        raise InstallError(f"{addon_dir / '__init__.py'} is missing: the add-on cannot be packed")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    zip_path = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    tmp = zip_path.with_name(zip_path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel in addon_files(addon_dir):
            info = zipfile.ZipInfo(rel.as_posix(), date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, (addon_dir / rel).read_bytes())
    os.replace(tmp, zip_path)
    return zip_path


# ----------------------------------------------------------------------------------------------------------------------
# 6. Blender


def parse_blender_version(text: str) -> tuple[int, int, int]:
    """``(major, minor, patch)`` from ``blender --version`` output (first ``Blender X.Y[.Z]``).

    Raises:
        InstallError: no version in ``text``.
    """
    m = re.search(r"Blender\s+(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        raise InstallError(f"cannot read a Blender version from: {text.strip()[:200]!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def blender_install_command(blender: Path, zip_path: Path) -> list[str]:
    """argv that installs and enables ``zip_path`` in Blender's ``user_default`` repository.

    No ``--factory-startup``: with ``-e`` Blender saves the user preferences after enabling, and under factory
    startup that would overwrite the user's preferences with factory defaults.
    """
    return [str(blender), "--background", "--command", "extension", "install-file",
            "-r", BLENDER_REPO, "-e", str(Path(zip_path).absolute())]


def manual_install_hint(zip_path: Path) -> str:
    return (f"install it by hand: Blender > Edit > Preferences > Get Extensions > (top-right menu) "
            f"Install from Disk... > {zip_path}")


def install_into_blender(blender_arg: Path | None, zip_path: Path) -> tuple[str, str]:
    """Install the extension zip into Blender; returns ``(status, detail)`` for the summary."""
    exe = str(blender_arg) if blender_arg is not None else shutil.which("blender")
    if exe is None:
        return "skipped", "no `blender` on PATH (pass --blender PATH); " + manual_install_hint(zip_path)
    if blender_arg is not None and not (Path(exe).is_file() or shutil.which(exe)):
        return "failed", f"--blender {exe} does not exist"
    try:
        proc = run_capture([exe, "--version"], timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "failed", f"`{exe} --version` did not run: {exc}"
    try:
        version = parse_blender_version(proc.stdout)
    except InstallError as exc:
        return "failed", str(exc)
    if version[:2] < BLENDER_MIN_VERSION:
        need = ".".join(map(str, BLENDER_MIN_VERSION))
        return "failed", (f"Blender {'.'.join(map(str, version))} at {exe} is older than {need}, which extensions "
                          f"need; install Blender {need}+ or pass --blender")
    cmd = blender_install_command(Path(exe), zip_path)
    print("$ " + " ".join(cmd), flush=True)
    try:
        proc = run_capture(cmd, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "failed", f"Blender did not finish installing the extension: {exc}; " + manual_install_hint(zip_path)
    print(proc.stdout.rstrip())
    if proc.returncode != 0:
        return "failed", (f"Blender exited {proc.returncode} installing the extension; "
                          + manual_install_hint(zip_path))
    return "done", f"Blender {'.'.join(map(str, version))} ({exe}), repository {BLENDER_REPO}, enabled"


# ----------------------------------------------------------------------------------------------------------------------
# 7. Verify

VERIFY_SCRIPT = r"""
import importlib, json, sys
out = {"python": sys.version.split()[0]}
for name in sys.argv[1:]:
    try:
        module = importlib.import_module(name)
        out[name] = getattr(module, "__version__", None) or getattr(getattr(module, "app", None), "version_string", "ok")
    except Exception as exc:
        out[name] = "ERROR: " + type(exc).__name__ + ": " + str(exc)[:300]
if "torch" in out and not str(out["torch"]).startswith("ERROR"):
    import torch
    out["cuda_available"] = bool(torch.cuda.is_available())
    out["cuda_device"] = torch.cuda.get_device_name(0) if out["cuda_available"] else None
    out["mps_available"] = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
print("LATENTFORGE_VERIFY " + json.dumps(out))
"""

# The diffusers/transformers submodules force the real imports (the packages themselves import lazily).
VERIFY_MODULES = ("torch", "torchvision", "diffusers", "diffusers.models.unets.unet_2d_condition", "transformers",
                  "transformers.models.clip.modeling_clip", "open_clip", "dalle2_pytorch", "kornia", "peft",
                  "point_cloud_utils", "mcubes", "xatlas", "trimesh", "igl",
                  "blender_addon.core.paths")


def verify_modules(cuda: bool, dev_bpy: bool, ray: bool = False) -> tuple[str, ...]:
    """The modules the verify step imports with the venv's python."""
    return VERIFY_MODULES + (("nvdiffrast",) if cuda else ()) + (("bpy",) if dev_bpy else ()) + \
        (("ray",) if ray else ())


def verify_install(python: Path, modules: tuple[str, ...], neutral_cwd: Path) -> dict:
    """Import ``modules`` with ``python`` from ``neutral_cwd`` (so the repo comes from the .pth, not the cwd).

    Returns:
        ``{module: version or "ERROR: ..."}`` plus ``python``, ``cuda_available`` and ``cuda_device``.

    Raises:
        InstallError: the interpreter itself failed.
    """
    proc = run_capture([str(python), "-c", VERIFY_SCRIPT, *modules], timeout=600, cwd=neutral_cwd)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("LATENTFORGE_VERIFY ")), None)
    if proc.returncode != 0 or line is None:
        raise InstallError(f"verification script failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    return json.loads(line[len("LATENTFORGE_VERIFY "):])


# ----------------------------------------------------------------------------------------------------------------------
# Main


def next_commands(python: Path, home: Path | None) -> list[str]:
    """Shell lines to start the backend and run the tests with this install."""
    prefix = f"LATENTFORGE_HOME={home} " if home is not None and not IS_WINDOWS else ""
    return [f"start the backend:  {prefix}{python} -m backend serve",
            f"run the tests:      cd {REPO_ROOT} && {prefix}{python} -m pytest -q tests"]


def print_summary(report: Report, facts: dict[str, str], commands: list[str], notes: list[str]) -> None:
    print("\n" + "=" * 78)
    print("LatentForge install summary")
    print("=" * 78)
    width = max(len(s.name) for s in report.steps) if report.steps else 10
    for s in report.steps:
        print(f"  {s.name:<{width}}  {s.status:<7}  {s.detail}")
    print()
    for key, value in facts.items():
        print(f"  {key:<14} {value}")
    for note in notes:
        print(f"\n  NOTE: {note}")
    if commands:
        print("\nNext:")
        for c in commands:
            print(f"  {c}")
    print("\nResult: " + ("FAILED (see the failed steps above)" if report.failed else "OK"), flush=True)


STEP_NAMES = ("virtualenv", "packages", ".pth file", "token and config", "extension zip", "Blender extension",
              "verify imports", "backend --version")


def main(argv: list[str] | None = None) -> int:
    """Run every install step; returns the process exit code (0 when no step failed)."""
    if sys.version_info < MIN_PYTHON:
        print(f"install.py needs Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+, this is {sys.version.split()[0]}",
              file=sys.stderr)
        return 2
    args = parse_args(argv)
    report = Report()
    venv_dir = args.venv.expanduser().absolute()
    python = venv_python(venv_dir)
    home = args.home.expanduser().absolute() if args.home is not None else None
    facts: dict[str, str] = {"venv python": str(python)}
    notes: list[str] = []
    current = ["virtualenv"]  # the step running now, named in the summary if it fails

    def timed(name, fn):
        current[0] = name
        heading(name)
        t0 = time.monotonic()
        return fn(), time.monotonic() - t0

    try:
        # 1. virtualenv
        outcome, dt = timed("virtualenv", lambda: ensure_venv(venv_dir))
        info = venv_info(python)
        report.add("virtualenv", "done", f"{outcome} {venv_dir} (Python {'.'.join(map(str, info['version']))})", dt)

        # 2. packages
        current[0] = "packages"
        cuda = cuda_present(args.device)
        constraints = write_constraints(venv_dir, args.torch_spec, args.torchvision_spec)
        bpy_installed = False
        for group in plan_pip_groups(args.torch_spec, cuda, args.dev, tuple(info["version"]), args.studio,
                                     args.torchvision_spec):
            step = f"pip: {group.name}"
            if group.skip_reason:
                heading(step)
                report.add(step, "skipped", group.skip_reason)
                continue
            _, dt = timed(step, lambda g=group: pip_install(python, g, constraints, args.quiet))
            report.add(step, "done", " ".join(group.requirements), dt)
            bpy_installed = bpy_installed or group.requirements == (BPY_SPEC,)
        if cuda:
            notes.append("nvdiffrast (pip package diffrp-nvdiffrast) is under the NVIDIA Source Code License "
                         "(non-commercial use only); it was installed because CUDA is present.")
        if args.dev and not bpy_installed:
            notes.append(f"bpy was not installed (it needs Python {BPY_PYTHON[0]}.{BPY_PYTHON[1]}), so the "
                         "Blender add-on tests will be skipped.")

        # 3. .pth
        pth, dt = timed(".pth file", lambda: write_pth(Path(info["purelib"])))
        report.add(".pth file", "done", f"{pth} -> {REPO_ROOT}", dt)
        command, dt = timed("latentforge command", lambda: install_command(python, args.quiet))
        report.add("latentforge command", "done", str(command), dt)

        # 4. token + config
        version = read_manifest(ADDON_DIR / "blender_manifest.toml")["version"]
        home_result, dt = timed("token and config", lambda: configure_home(
            python=python, version=version, host=args.host, port=args.port, new_token=args.new_token, home=home))
        report.add("token and config", "done", f"token {home_result['token']}, home {home_result['home']}", dt)
        facts["token file"] = str(home_result["token_path"])
        facts["config file"] = str(home_result["config_path"])
        facts["backend"] = f"{home_result['config']['host']}:{home_result['config']['port']}"
        if home_result["token"] == "rotated":
            notes.append("The token was rotated: restart running backends and reconnect Blender.")
        if home is not None:
            notes.append(f"--home: set LATENTFORGE_HOME={home} in the environment of Blender and the backend "
                         "too, or they will look in the default home.")
        if args.tls:
            (state, fingerprint), dt = timed("TLS certificate", lambda: tls_certificate(python, args.tls_host,
                                                                                        venv_dir))
            report.add("TLS certificate", "done", f"{state} {paths_module().tls_cert_path()}", dt)
            facts["TLS fingerprint"] = fingerprint
            notes.append("Remote artists pin the TLS fingerprint above in the add-on's preferences (TLS Fingerprint) "
                         "next to their token; start the backend with `serve --tls --host 0.0.0.0`.")

        # 5. extension zip
        zip_path, dt = timed("extension zip", lambda: build_extension_zip(DIST_DIR))
        report.add("extension zip", "done", str(zip_path), dt)
        facts["extension zip"] = str(zip_path)

        # 6. Blender
        if args.no_blender:
            heading("Blender extension")
            report.add("Blender extension", "skipped", "--no-blender; " + manual_install_hint(zip_path))
        else:
            (status, detail), dt = timed("Blender extension", lambda: install_into_blender(args.blender, zip_path))
            report.add("Blender extension", status, detail, dt)

        # 7. verify
        modules = verify_modules(cuda, bpy_installed, args.studio or args.dev)
        result, dt = timed("verify imports", lambda: verify_install(python, modules, neutral_cwd=venv_dir))
        for key, value in result.items():
            print(f"  {key:<26} {value}")
        broken = [m for m in modules if str(result.get(m, "")).startswith("ERROR")]
        if broken:
            report.add("verify imports", "failed", "cannot import " + ", ".join(broken), dt)
        else:
            cuda_text = f"CUDA on {result['cuda_device']}" if result.get("cuda_available") else \
                "MPS (Apple Silicon)" if result.get("mps_available") else "CUDA not available"
            report.add("verify imports", "done", f"torch {result.get('torch')}, {cuda_text}", dt)
        if (REPO_ROOT / "backend" / "__main__.py").is_file():
            cmd = [str(python), "-m", "backend", "--version"]
            proc, dt = timed("backend --version", lambda: run_capture(cmd, timeout=300, cwd=venv_dir))
            print(proc.stdout.rstrip())
            last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
            report.add("backend --version", "done" if proc.returncode == 0 else "failed",
                       last if proc.returncode == 0 else f"exit {proc.returncode}: {last}", dt)
        else:
            report.add("backend --version", "skipped", "backend/__main__.py does not exist yet")
    except (InstallError, OSError, subprocess.SubprocessError) as exc:
        report.add(current[0], "failed", str(exc))
    except KeyboardInterrupt:
        report.add(current[0], "failed", "interrupted")
    if report.failed:
        reached = {s.name if not s.name.startswith("pip: ") else "packages" for s in report.steps}
        for name in STEP_NAMES:
            if name not in reached:
                report.steps.append(Step(name, "skipped", "not reached: an earlier step failed"))
    print_summary(report, facts, next_commands(python, home) if not report.failed else [], notes)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
