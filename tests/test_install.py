"""Tests of ``install.py``'s pieces: extension zip, token/config, .pth, argument parsing, venv repair, pip plan.

Fast and offline: no pip, no network. ``install.py`` is imported as a module (importing it has no side effects).
"""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import install  # noqa: E402  (the repo's install.py; importing it has no side effects)


def _blender_ext_script() -> Path | None:
    """Blender's own extension tool (``bl_pkg/cli/blender_ext.py``) inside the bpy wheel, if bpy is installed."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        return None
    hits = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    return hits[0] if hits else None


# ----------------------------------------------------------------------------------------------------------------------
# Extension zip


def _make_addon(root: Path) -> Path:
    addon = root / "addon"
    (addon / "core" / "__pycache__").mkdir(parents=True)
    (addon / "__pycache__").mkdir()
    (addon / "blender_manifest.toml").write_text(
        'schema_version = "1.0.0"\nid = "testaddon"\nversion = "1.2.3"\nname = "T"\n'
        '[permissions]\nfiles = "x"\n', encoding="utf-8")
    (addon / "__init__.py").write_text('"""t"""\n', encoding="utf-8")
    (addon / "core" / "__init__.py").write_text("", encoding="utf-8")
    (addon / "core" / "protocol.py").write_text("X = 1\n", encoding="utf-8")
    (addon / "core" / "stale.pyc").write_bytes(b"\x00")
    (addon / "core" / "__pycache__" / "protocol.cpython-311.pyc").write_bytes(b"\x00")
    (addon / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\x00")
    (addon / ".DS_Store").write_bytes(b"\x00")
    return addon


def test_zip_of_synthetic_addon_has_files_at_root_and_no_caches(tmp_path):
    addon = _make_addon(tmp_path)
    zip_path = install.build_extension_zip(tmp_path / "dist", addon_dir=addon)
    assert zip_path == tmp_path / "dist" / "testaddon-1.2.3.zip"
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(zf.namelist())
        assert zf.read("core/protocol.py") == b"X = 1\n"
    assert names == ["__init__.py", "blender_manifest.toml", "core/__init__.py", "core/protocol.py"]


def test_zip_is_byte_identical_when_rebuilt(tmp_path):
    addon = _make_addon(tmp_path)
    first = install.build_extension_zip(tmp_path / "a", addon_dir=addon).read_bytes()
    os.utime(addon / "__init__.py", (1e9, 1e9))  # a touched file must not change the archive
    second = install.build_extension_zip(tmp_path / "b", addon_dir=addon).read_bytes()
    assert first == second


def test_zip_without_addon_init_is_refused(tmp_path):
    addon = _make_addon(tmp_path)
    (addon / "__init__.py").unlink()
    with pytest.raises(install.InstallError, match="__init__.py"):
        install.build_extension_zip(tmp_path / "dist", addon_dir=addon)


def test_real_extension_zip_layout_and_manifest(tmp_path):
    src_manifest = tomllib.loads((REPO_ROOT / "blender_addon" / "blender_manifest.toml").read_text(encoding="utf-8"))
    zip_path = install.build_extension_zip(tmp_path)
    assert zip_path.name == f"latentforge-{src_manifest['version']}.zip"
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode("utf-8"))
    assert {"blender_manifest.toml", "__init__.py", "core/__init__.py", "core/paths.py"} <= names
    if (REPO_ROOT / "blender_addon" / "core" / "protocol.py").exists():
        assert "core/protocol.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert manifest["id"] == "latentforge"
    assert manifest["version"] == src_manifest["version"]
    # every source file (caches aside) is in the zip, with the same bytes
    addon = REPO_ROOT / "blender_addon"
    expected = {p.relative_to(addon).as_posix() for p in addon.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
                and not any(part.startswith(".") for part in p.relative_to(addon).parts)}
    assert names == expected


needs_bpy = pytest.mark.skipif(_blender_ext_script() is None, reason="bpy (Blender as a module) is not installed")


@needs_bpy
def test_real_extension_zip_passes_blenders_validator(tmp_path):
    script = _blender_ext_script()
    tags = script.parents[3] / "modules" / "_bpy_internal" / "extensions" / "tags.py"  # what Blender passes
    zip_path = install.build_extension_zip(tmp_path)
    proc = subprocess.run([sys.executable, str(script), "validate", f"--valid-tags={tags}", str(zip_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_bpy
def test_blender_cli_installs_and_enables_the_zip(tmp_path):
    """The exact arguments install.py gives ``blender --command extension`` go through Blender's own handler
    (in the bpy module, with a throwaway user folder); the add-on ends up installed and enabled."""
    zip_path = install.build_extension_zip(tmp_path / "dist")
    cmd = install.blender_install_command(Path("blender"), zip_path)
    ext_args = cmd[cmd.index("extension") + 1:]
    code = ("import sys, bpy, bl_pkg.bl_extension_cli as cli; "
            f"rc = cli.cli_extension_handler({ext_args!r}); "
            "print('RC', rc, 'ENABLED', 'bl_ext.user_default.latentforge' in bpy.context.preferences.addons)")
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "blender-user"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert "RC 0 ENABLED True" in proc.stdout, proc.stdout + proc.stderr
    installed = tmp_path / "blender-user" / "extensions" / "user_default" / "latentforge"
    assert (installed / "blender_manifest.toml").is_file() and (installed / "__init__.py").is_file()


def test_manifest_reader_without_tomllib_matches_tomllib(monkeypatch):
    text = (REPO_ROOT / "blender_addon" / "blender_manifest.toml").read_text(encoding="utf-8")
    expected = tomllib.loads(text)
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` now fails, as on Python 3.10
    data = install.read_manifest(REPO_ROOT / "blender_addon" / "blender_manifest.toml")
    assert data["id"] == expected["id"]
    assert data["version"] == expected["version"]
    assert "network" not in data  # keys of [permissions] are not top-level


# ----------------------------------------------------------------------------------------------------------------------
# Token and config


@pytest.fixture
def lf_home(tmp_path, monkeypatch):
    home = tmp_path / "lf-home"
    monkeypatch.setenv("LATENTFORGE_HOME", str(home))
    return home


def test_token_created_0600_then_kept(lf_home, tmp_path):
    python = tmp_path / "venv" / "bin" / "python"
    first = install.configure_home(python=python, version="0.1.0")
    token_file = lf_home / "token"
    assert first["token_path"] == token_file and first["token"] == "created"
    token = token_file.read_text().strip()
    assert len(token) == 64 and int(token, 16) >= 0
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    second = install.configure_home(python=python, version="0.1.0")
    assert second["token"] == "kept"
    assert token_file.read_text().strip() == token
    third = install.configure_home(python=python, version="0.1.0", new_token=True)
    assert third["token"] == "rotated"
    new = token_file.read_text().strip()
    assert new != token and len(new) == 64
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


def test_config_defaults_then_user_values_preserved(lf_home, tmp_path):
    import json

    python = tmp_path / "venv" / "bin" / "python"
    install.configure_home(python=python, version="0.1.0")
    config = json.loads((lf_home / "config.json").read_text())
    assert config == {"python": str(python), "repo_root": str(REPO_ROOT), "host": "127.0.0.1", "port": 9876,
                      "data_dir": str(lf_home / "data"), "version": "0.1.0"}

    # the user edits the config; a plain re-run keeps the edits and updates only the install facts
    config.update(port=7000, data_dir="/srv/lf-data", device="cuda:1")
    (lf_home / "config.json").write_text(json.dumps(config))
    python2 = tmp_path / "venv2" / "bin" / "python"
    install.configure_home(python=python2, version="0.2.0")
    config2 = json.loads((lf_home / "config.json").read_text())
    assert config2 == dict(config, python=str(python2), version="0.2.0")

    # explicit flags override
    install.configure_home(python=python2, version="0.2.0", host="0.0.0.0", port=9000)
    config3 = json.loads((lf_home / "config.json").read_text())
    assert (config3["host"], config3["port"], config3["data_dir"], config3["device"]) == \
        ("0.0.0.0", 9000, "/srv/lf-data", "cuda:1")


def test_home_flag_sets_env_and_is_recorded(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("LATENTFORGE_HOME", str(tmp_path / "other"))
    home = tmp_path / "flag-home"
    result = install.configure_home(python=tmp_path / "py", version="0.1.0", home=home)
    assert os.environ["LATENTFORGE_HOME"] == str(home)
    assert result["config_path"] == home / "config.json"
    assert json.loads((home / "config.json").read_text())["home"] == str(home)
    assert (home / "token").is_file() and not (tmp_path / "other").exists()


# ----------------------------------------------------------------------------------------------------------------------
# .pth file


def test_pth_puts_repo_root_on_sys_path(tmp_path):
    site_dir = tmp_path / "site-packages"
    repo = tmp_path / "some repo"
    repo.mkdir()
    (repo / "lf_probe_mod.py").write_text("VALUE = 42\n")
    pth = install.write_pth(site_dir, repo)
    assert pth == site_dir / "latentforge.pth"
    assert pth.read_text().splitlines() == [str(repo.resolve())]
    # Python's own site machinery reads the file: the module in `repo` becomes importable from elsewhere
    code = (f"import site, sys; site.addsitedir({str(site_dir)!r}); "
            "import lf_probe_mod; print(lf_probe_mod.VALUE)")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.stdout.strip() == "42", out.stderr


def test_pth_rejects_missing_repo(tmp_path):
    with pytest.raises(install.InstallError, match="not a folder"):
        install.write_pth(tmp_path / "site", tmp_path / "nope")


# ----------------------------------------------------------------------------------------------------------------------
# Arguments, venv, pip plan, Blender helpers


def test_argument_defaults():
    args = install.parse_args([])
    assert args.venv == REPO_ROOT / ".venv"
    assert (args.torch_spec, args.torchvision_spec) == ("torch==2.14.1", "torchvision==0.29.1")
    assert args.device == "auto"
    assert (args.dev, args.new_token, args.no_blender, args.quiet) == (False, False, False, False)
    assert (args.host, args.port, args.home, args.blender) == (None, None, None, None)


def test_argument_values_and_errors(capsys):
    args = install.parse_args(["--dev", "--port", "7000", "--host", "0.0.0.0", "--venv", "/x/v", "-q"])
    assert (args.dev, args.port, args.host, args.venv, args.quiet) == (True, 7000, "0.0.0.0", Path("/x/v"), True)
    for bad in (["--port", "70000"], ["--port", "abc"], ["--device", "tpu"], ["--no-blender", "--blender", "b"]):
        with pytest.raises(SystemExit) as exc:
            install.parse_args(bad)
        assert exc.value.code == 2
    assert "65535" in capsys.readouterr().err


def test_venv_python_paths():
    assert install.venv_python(Path("/v"), windows=False) == Path("/v/bin/python")
    assert install.venv_python(Path("C:/v"), windows=True) == Path("C:/v/Scripts/python.exe")


def test_ensure_venv_creates_reuses_repairs_and_refuses(tmp_path):
    venv_dir = tmp_path / "venv"
    assert install.ensure_venv(venv_dir, with_pip=False) == "created"
    python = install.venv_python(venv_dir)
    marker = venv_dir / "keep.txt"
    marker.write_text("x")
    assert install.ensure_venv(venv_dir, with_pip=False) == "reused"
    assert marker.exists()  # reuse does not clear
    python.unlink()  # broken interpreter
    assert install.ensure_venv(venv_dir, with_pip=False) == "repaired"
    out = subprocess.run([str(python), "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True)
    assert Path(out.stdout.strip()) == venv_dir
    user_dir = tmp_path / "not-a-venv"
    user_dir.mkdir()
    (user_dir / "precious.txt").write_text("x")
    with pytest.raises(install.InstallError, match="not a virtualenv"):
        install.ensure_venv(user_dir, with_pip=False)
    assert (user_dir / "precious.txt").exists()


def test_pip_plan_cpu_and_cuda():
    cpu = install.plan_pip_groups("torch==2.13.0", cuda=False, dev=False, python_version=(3, 11, 7))
    assert [g.requirements[0] for g in cpu] == ["torch==2.13.0", "numpy<2", "diffrp-nvdiffrast"]
    # torchvision travels with torch on every machine (open_clip and dalle2-pytorch import it)
    assert cpu[0].requirements == ("torch==2.13.0", "torchvision==0.29.1", "numpy<2")
    assert [bool(g.skip_reason) for g in cpu] == [False, False, True]
    cuda = install.plan_pip_groups("torch==2.13.0", cuda=True, dev=False, python_version=(3, 11, 7))
    assert not cuda[2].skip_reason and cuda[2].requirements == ("diffrp-nvdiffrast",)


def test_pip_plan_dev_bpy_needs_python_311():
    ok = {g.name: g for g in install.plan_pip_groups("torch==2.13.0", False, True, (3, 11, 2))}
    assert ok["bpy (Blender as a module)"].requirements == ("bpy>=5.0,<5.1",)
    assert not ok["bpy (Blender as a module)"].skip_reason
    data = ok["test data (pyvista wheel, no deps)"]
    assert data.no_deps and data.requirements == ("pyvista==0.49.1",)
    old = {g.name: g for g in install.plan_pip_groups("torch==2.13.0", False, True, (3, 10, 12))}
    assert "3.11" in old["bpy (Blender as a module)"].skip_reason and "3.10" in old["bpy (Blender as a module)"].skip_reason


def test_pip_command_and_constraints(tmp_path):
    constraints = install.write_constraints(tmp_path, "torch==2.13.0", "torchvision==0.28.0")
    assert constraints.read_text().split() == ["torch==2.13.0", "torchvision==0.28.0", "numpy<2", "pyarrow<26"]
    group = install.PipGroup("data", ("pyvista==0.49.1",), no_deps=True)
    cmd = install.pip_command(Path("/v/bin/python"), group, constraints, quiet=True)
    assert cmd == ["/v/bin/python", "-m", "pip", "install", "-q", "--no-deps", "-c", str(constraints),
                   "pyvista==0.49.1"]


def test_blender_version_parsing_and_command(tmp_path):
    assert install.parse_blender_version("Blender 4.2.3 LTS\n\tbuild date: ...") == (4, 2, 3)
    assert install.parse_blender_version("Blender 5.0\n") == (5, 0, 0)
    with pytest.raises(install.InstallError, match="cannot read"):
        install.parse_blender_version("command not found")
    cmd = install.blender_install_command(Path("/opt/blender/blender"), tmp_path / "x.zip")
    assert cmd == ["/opt/blender/blender", "--background", "--command", "extension", "install-file",
                   "-r", "user_default", "-e", str(tmp_path / "x.zip")]


def test_too_old_blender_is_reported_failed(tmp_path):
    fake = tmp_path / "blender"
    fake.write_text("#!/bin/sh\necho 'Blender 4.1.1'\n")
    fake.chmod(0o755)
    status, detail = install.install_into_blender(fake, tmp_path / "x.zip")
    assert status == "failed" and "4.1.1" in detail and "4.2" in detail


def test_import_has_no_side_effects(tmp_path):
    code = f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); import install; print('imported')"
    env = dict(os.environ, LATENTFORGE_HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, "-B", "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=60)
    assert out.stdout == "imported\n" and out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no home, no dist, nothing written


def test_macos_never_plans_cuda_extras_and_refuses_device_cuda(monkeypatch):
    monkeypatch.setattr(install.shutil, "which", lambda name: "/usr/bin/" + name)  # even with an nvidia-smi on PATH
    assert install.cuda_present("auto", platform="darwin") is False
    assert install.cuda_present("cpu", platform="darwin") is False
    with pytest.raises(install.InstallError, match="no CUDA on macOS"):
        install.cuda_present("cuda", platform="darwin")
    groups = install.plan_pip_groups(install.TORCH_SPEC, install.cuda_present("auto", platform="darwin"), False,
                                     (3, 11))
    nvdiffrast = next(g for g in groups if g.name.startswith("nvdiffrast"))
    assert nvdiffrast.skip_reason  # no nvdiffrast on macOS: the torch rasterizer serves MPS
    assert install.cuda_present("cuda", platform="linux") is True


def test_studio_and_dev_install_ray_and_verify_it():
    def names(**flags):
        return {g.name: g for g in install.plan_pip_groups("torch==2.13.0", False, python_version=(3, 11, 7), **flags)}

    assert "Ray (studio executor)" not in names(dev=False)
    for flags in ({"dev": False, "studio": True}, {"dev": True}):  # CI runs --dev: the Ray tests run there
        assert names(**flags)["Ray (studio executor)"].requirements == install.STUDIO_REQUIREMENTS == ("ray",)
    assert install.parse_args(["--studio"]).studio and not install.parse_args([]).studio
    assert install.verify_modules(False, False, ray=True)[-1] == "ray"
    assert "ray" not in install.verify_modules(False, False)
