"""Command line: ``python -m backend {serve,run,train,eval,jobs,download,tokens,tls}`` (installed as the ``latentforge``
command).

- ``serve``: the socket service the Blender add-on talks to; ``--tls`` for remote use (binding a non-loopback address
  without it is refused unless ``--insecure``); ``--executor ray`` runs its jobs on Ray actors, one per GPU of a Ray
  cluster (``--ray-address``), instead of in this process.
- ``run <pipeline>``: one job in this process, no Blender, with a progress bar; writes a GLB (+ PNG texture). Every
  field of the pipeline's config is a flag (``--texture-size 2048``); ``--help`` lists them with their defaults. A
  result with several meshes (``shape_ldm --num-samples 4``) becomes one GLB with one node per mesh, side by side.
- ``train shape_vae|shape_ldm``: train Michelangelo's shape VAE, then its denoiser, on a folder of meshes
  (``--data DIR --out DIR``; every field of the training config is a flag, ``--resume`` continues a run);
  ``train lion_vae|lion_ddm`` the same for LION's VAE, then its two latent DDMs.
- ``eval 1nna --generated DIR --reference DIR``: the 1-NNA accuracy (Chamfer and/or EMD) of generated point clouds
  or meshes against reference ones (LION's Table 1 protocol; 50 % is ideal).
- ``jobs``: list the job store (with the worker that ran each job); ``--export JOB --out file.glb`` copies a finished job's result; ``--delete JOB``
  deletes a finished job and its files; ``--prune`` applies the store's size/age cap once.
- ``download <model>``: fetch a Stable Diffusion model, a public Michelangelo checkpoint (``text-ASLDM-256``,
  ``image-ASLDM-256``, ``shapevae-256``) with the CLIP it needs, or a Shap-E pipeline (``openai/shap-e``,
  ``openai/shap-e-img2img``), into the Hugging Face cache, or a public Point-E checkpoint (``base40M-textvec``,
  ``base40M``, ``base300M``, ``base1B``, ``upsample``, ``sdf``) into its cache folder with the CLIP tower it needs
  (the only command that downloads), or a CLIP model for CLIP guidance (``ViT-B-32/openai`` and other open_clip
  ``<arch>/<tag>``, ``openai/clip-vit-base-patch32`` and the other OpenAI transformers ids), or CLIP-Mesh's diffusion
  prior (``NasirKhalid24/Dalle2-Diffusion-Prior``).
- ``tokens add NAME [--admin] | list | revoke NAME``: one token per artist (tokens.json in the LatentForge home); a
  running ``serve`` picks changes up at the next hello.
- ``tls fingerprint | make``: the SHA-256 fingerprint of the backend's TLS certificate (what the add-on pins), or
  a new self-signed certificate.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
import typing
from pathlib import Path

import torch

from blender_addon.core import paths, tls
from blender_addon.core.protocol import safe_text
from blender_addon.core.text import format_duration

from . import __version__
from .cli_progress import ProgressReporter
from .geometry.mesh import MeshError, load_mesh, load_point_cloud
from .michelangelo.conditioner import load_image
from .michelangelo.model import PUBLIC_FILES, download_public_checkpoint
from .metrics.one_nna import METRICS as NNA_METRICS, evaluate_1nna, load_clouds
from .lion.checkpoint import download_checkpoint as download_lion
from .lion.config import PRESETS as LION_PRESETS
from .lion.train import TRAINERS as LION_TRAINERS
from .michelangelo.train import TRAINERS as MICHELANGELO_TRAINERS
from .models.cache import ModelCache
from .models.devices import resolve_device
from .models.base import TINY_RANDOM, ModelNotFoundError
from .models.clip import DEFAULT_CLIP_MODEL, download_clip, is_clip_model
from .models.clip_prior import CLIP_MESH_PRIOR, PRIOR_MODELS, download_prior
from .models.shap_e import SHAP_E_MODELS, download_shap_e
from .models.stable_diffusion import DEFAULT_SD_MODEL, download_stable_diffusion
from .point_e.config import PRESETS as POINT_E_PRESETS
from .point_e.model import download_point_e
from .pipelines import PIPELINES
from .pipelines.base import PipelineInputs
from .pipelines.sds_common import SDSPipelineConfig
from .pipelines.io import inputs_to_arrays
from .serving.certificates import CertificateError, certificate_fingerprint, default_hosts, ensure_certificate, \
    make_certificate
from .serving.identities import ADMIN_NAME, IdentityError, Identities, add_identity, revoke_identity
from .serving.ray_executor import RayExecutor
from .serving.server import BackendServer
from .serving.service import JobService
from .serving.store import TERMINAL, JobStore

log = logging.getLogger("backend")

TRAINERS = {**MICHELANGELO_TRAINERS, **LION_TRAINERS}
"""``train <name>``: every method's trainers (config class, training function)."""

# Flags every pipeline shares, in the order `--help` shows them (the rest of each config follows).
SHARED_FLAGS = ("model", "prompt", "negative_prompt", "seed", "iterations")
LOW_VRAM_HELP = ("trade speed for GPU memory: sliced attention, sliced/tiled VAE with gradient checkpointing, the text "
                 "encoder on the CPU (Stable Diffusion pipelines); same results")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=None,
                   help="job store folder (default: data_dir of the install config, else <home>/data)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1 …")
    _add_verbosity(p)


def _add_verbosity(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only (no progress)")


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    """argparse type: a TCP port, 0 (any free) to 65535."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port from 0 to 65535, got {value}")
    return value


def _glb_path(text: str) -> Path:
    """argparse type: an output file ending in .glb (the writer makes glTF binary), not a folder."""
    path = Path(text)
    if text.endswith(("/", "\\")) or path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file name ending in .glb")
    if path.suffix.lower() != ".glb":
        raise argparse.ArgumentTypeError(f"{text!r} must end in .glb (the result is written as glTF binary)")
    return path


def _flag_help(f: dataclasses.Field, default) -> str:
    """A config field's help: its doc, then default, range and choices from the field's own description."""
    meta = f.metadata
    parts = [] if default is None else [f"default: {list(default) if isinstance(default, tuple) else default}"]
    if meta.get("low") is not None or meta.get("high") is not None:
        low = "-inf" if meta.get("low") is None else f"{meta['low']:g}"
        high = "inf" if meta.get("high") is None else f"{meta['high']:g}"
        parts.append(f"range {'(' if meta.get('low_exclusive') else '['}{low}, {high}]")
    if meta.get("choices"):
        parts.append("one of " + ", ".join(map(str, meta["choices"])))
    return meta.get("doc", "") + (f" ({'; '.join(parts)})" if parts else "")


def _config_flags(p: argparse.ArgumentParser, config_class) -> None:
    hints = typing.get_type_hints(config_class)
    fields = sorted(dataclasses.fields(config_class),
                    key=lambda f: SHARED_FLAGS.index(f.name) if f.name in SHARED_FLAGS else len(SHARED_FLAGS))
    for f in fields:
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else (f.default if f.default is not dataclasses.MISSING else f.default_factory())
        help_text = _flag_help(f, default)
        if tp is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif typing.get_origin(tp) is tuple:
            elem = typing.get_args(tp)[0]
            p.add_argument(flag, type=elem, nargs=len(typing.get_args(tp)), metavar=("MIN", "MAX"),
                           default=argparse.SUPPRESS, help=help_text)
        else:
            p.add_argument(flag, type=tp, required=required, default=argparse.SUPPRESS, help=help_text)


def _add_store_caps(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-store-gb", type=float, default=50.0,
                   help="size cap of the job store in GB (default 50; 0 = none): over it, the finished jobs that "
                        "finished longest ago are deleted; queued/running jobs never are")
    p.add_argument("--max-job-age-days", type=float, default=0.0,
                   help="delete finished jobs that finished more than this many days ago (default 0 = keep)")


def _store_caps(args) -> tuple[int | None, float | None]:
    if args.max_store_gb < 0 or args.max_job_age_days < 0:
        raise ValueError("--max-store-gb and --max-job-age-days must be >= 0")
    return (int(args.max_store_gb * 1e9) or None), (args.max_job_age_days * 86400.0 or None)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``<prog>: error: <what> (--help shows the flags)``, exit 2 — no usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help shows the flags)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m backend", description="LatentForge backend")
    parser.add_argument("--version", action="version", version=f"latentforge-backend {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the socket service for the Blender add-on")
    cfg = paths.read_config()
    serve.add_argument("--host", default=cfg.get("host", paths.DEFAULT_HOST),
                       help="interface to bind (default 127.0.0.1); any other address needs --tls (or --insecure)")
    serve.add_argument("--port", type=_port, default=cfg.get("port", paths.DEFAULT_PORT),
                       help="TCP port, 0–65535 (0 = any free)")
    serve.add_argument("--token-file", type=Path, default=None,
                       help=f"the admin's token file (default {paths.token_path()})")
    serve.add_argument("--tokens-file", type=Path, default=None,
                       help=f"identities file, one token per artist (default {paths.tokens_path()}; see `tokens`)")
    serve.add_argument("--tls", action="store_true",
                       help="speak TLS only; without --cert/--key the home's certificate, made on first use")
    serve.add_argument("--cert", type=Path, default=None,
                       help=f"--tls: PEM certificate (default {paths.tls_cert_path()})")
    serve.add_argument("--key", type=Path, default=None, help=f"--tls: its PEM private key (default "
                                                              f"{paths.tls_key_path()})")
    serve.add_argument("--tls-host", action="append", default=[], metavar="NAME",
                       help="--tls: a host name or IP the certificate made on first use names (repeatable)")
    serve.add_argument("--insecure", action="store_true",
                       help="allow a non-loopback --host without --tls (plain TCP: the token travels in clear)")
    serve.add_argument("--max-payload-mb", type=_positive_int, default=1024,
                       help="largest accepted message payload (MiB)")
    serve.add_argument("--allow-download", action="store_true",
                       help="let jobs download missing models from the Hugging Face Hub")
    serve.add_argument("--keep-models", type=_positive_int, default=1, help="models kept loaded between jobs")
    serve.add_argument("--low-vram", action="store_true", help=LOW_VRAM_HELP)
    serve.add_argument("--max-connections", type=_positive_int, default=64,
                       help="most client connections at once, authenticated or not (default 64)")
    serve.add_argument("--max-client-queue-mb", type=_positive_int, default=256,
                       help="most MiB of replies queued for one client before it is disconnected (default 256)")
    serve.add_argument("--max-buffered-mb", type=_positive_int, default=2048,
                       help="most MiB buffered for all clients together, incoming and outgoing (default 2048)")
    serve.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="where jobs run: local (default: one job at a time in this process) or ray (one Ray "
                            "actor per GPU of a Ray cluster, jobs in parallel; needs `install.py --studio`)")
    serve.add_argument("--ray-address", default=None,
                       help="with --executor ray: the Ray cluster to join (HOST:PORT of its head, or auto: the one "
                            "`ray start` runs on this machine); default: that one if there is one, else a new Ray "
                            "instance on this machine")
    serve.add_argument("--ray-workers", type=int, default=0,
                       help="with --executor ray: actors to start, one GPU each (default 0 = one per GPU of the "
                            "cluster)")
    _add_store_caps(serve)
    _add_common(serve)

    run = sub.add_parser("run", help="run one job here, without Blender")
    run_sub = run.add_subparsers(dest="pipeline", required=True)
    for name, spec in PIPELINES.items():
        p = run_sub.add_parser(name, help=spec.summary, description=spec.summary)
        replaced = {c.alternative_to for c in spec.point_inputs if c.alternative_to}
        for mesh_input in spec.mesh_inputs:  # a mesh a point cloud may replace: one of the two (checked at submit)
            p.add_argument(f"--{mesh_input.group.replace('_', '-')}", dest=mesh_input.group, type=Path,
                           required=mesh_input.required and mesh_input.group not in replaced,
                           help=f"{mesh_input.help} (OBJ/PLY/STL/GLB…)")
        for cloud_input in spec.point_inputs:
            p.add_argument(f"--{cloud_input.group.replace('_', '-')}", dest=cloud_input.group, type=Path,
                           required=cloud_input.required and not cloud_input.alternative_to,
                           help=f"{cloud_input.help} (PLY/XYZ/OBJ point cloud, or a mesh file: its vertices)")
        if spec.mesh_inputs or spec.point_inputs:
            p.add_argument("--up-axis", choices=("auto", "Y", "Z"), default="auto",
                           help="up axis of the input mesh and point cloud files (auto: Y for glb/gltf/obj, Z "
                                "otherwise)")
        for image_input in spec.image_inputs:
            p.add_argument(f"--{image_input.name.replace('_', '-')}", dest=image_input.name, type=Path,
                           required=image_input.required, help=f"{image_input.help} (PNG/JPEG…)")
        p.add_argument("--out", type=_glb_path, required=True,
                       help="output .glb (every mesh and point cloud: one node each, named mesh, mesh_1, …, "
                            "points, points_1, …)" + (
                           "; its texture is also written beside it as .png (a normal map as _normal.png)"
                           if spec.textured else ""))
        p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
        p.add_argument("--allow-download", action="store_true", help="download the model if it is not cached")
        p.add_argument("--low-vram", action="store_true", help=LOW_VRAM_HELP)
        _config_flags(p, spec.config_class)
        _add_common(p)


    train = sub.add_parser("train", help="train Michelangelo (shape VAE, then denoiser) or LION (VAE, then latent "
                                         "DDMs) on a folder of meshes")
    train_sub = train.add_subparsers(dest="trainer", required=True)
    for name, (config_class, _fn) in TRAINERS.items():
        summary = (config_class.__doc__ or "").strip().splitlines()[0]
        t = train_sub.add_parser(name, help=summary, description=summary)
        _config_flags(t, config_class)
        t.add_argument("--no-progress", action="store_true", help="no progress bar")
        _add_verbosity(t)

    evaluate = sub.add_parser("eval", help="shape-generation metrics on folders of point clouds or meshes")
    eval_sub = evaluate.add_subparsers(dest="metric_command", required=True)
    nna = eval_sub.add_parser("1nna", help="1-NNA accuracy of generated vs reference shapes (50 %% is ideal)",
                              description="Leave-one-out 1-nearest-neighbour accuracy over generated ∪ reference "
                                          "(LION's Table 1 protocol): 50 %% = indistinguishable sets, 100 %% = "
                                          "every shape's nearest neighbour is from its own set.")
    nna.add_argument("--generated", type=Path, required=True,
                     help="folder of generated clouds or meshes (.npy (N, 3), .ply, .obj, .off, .stl, .glb)")
    nna.add_argument("--reference", type=Path, required=True, help="folder of reference clouds or meshes (same kinds)")
    nna.add_argument("--points", type=_positive_int, default=2048,
                     help="points per cloud: meshes are sampled, larger clouds subsampled (default 2048)")
    nna.add_argument("--metric", choices=("cd", "emd", "both"), default="both",
                     help="distance between clouds: cd (Chamfer, squared L2), emd (exact matching), or both")
    nna.add_argument("--normalize", choices=("box", "none"), default="box",
                     help="box: each cloud to the [-1, 1] box (LION's evaluation); none: compare as they are")
    nna.add_argument("--seed", type=int, default=0, help="seed of the mesh samples and subsampling (default 0)")
    _add_verbosity(nna)

    jobs = sub.add_parser("jobs", help="list the job store, or export a finished job")
    jobs.add_argument("--limit", type=_positive_int, default=20, help="most recent jobs to list (default 20)")
    jobs.add_argument("--export", metavar="JOB_ID", help="copy this finished job's result.glb to --out (its "
                                                         "texture as .png and normal map as _normal.png beside it)")
    jobs.add_argument("--out", type=_glb_path, help="where --export writes the result (.glb)")
    jobs.add_argument("--delete", metavar="JOB_ID",
                      help="delete this finished job (done/failed/cancelled) and its files")
    jobs.add_argument("--prune", action="store_true",
                      help="apply the store cap (--max-store-gb, --max-job-age-days) once and list what it deleted")
    _add_store_caps(jobs)
    _add_common(jobs)

    tokens = sub.add_parser("tokens", help="one token per artist: add, list, revoke (tokens.json)")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    add = tokens_sub.add_parser("add", help="make a token for a new identity and print it once")
    add.add_argument("name", help="identity name: 1-32 of a-z 0-9 _ . - (the owner of its jobs)")
    add.add_argument("--admin", action="store_true", help="an admin (every job) instead of an artist (own jobs)")
    add.add_argument("--out", type=Path, default=None,
                     help="write the token to this file (mode 0600) instead of printing it")
    tokens_sub.add_parser("list", help="the identities (never their tokens)")
    revoke = tokens_sub.add_parser("revoke", help="remove an identity; its token stops working")
    revoke.add_argument("name", help="identity to remove")
    for p in (add, tokens_sub.choices["list"], revoke):
        p.add_argument("--tokens-file", type=Path, default=None,
                       help=f"identities file (default {paths.tokens_path()})")
        _add_verbosity(p)

    tls_parser = sub.add_parser("tls", help="the backend's TLS certificate: its fingerprint, or a new one")
    tls_sub = tls_parser.add_subparsers(dest="tls_command", required=True)
    fingerprint = tls_sub.add_parser("fingerprint", help="print the certificate's SHA-256 fingerprint (to pin)")
    make = tls_sub.add_parser("make", help="make a self-signed certificate (EC P-256) and its key")
    make.add_argument("--force", action="store_true", help="replace an existing certificate (clients must re-pin)")
    for p in (fingerprint, make):
        p.add_argument("--cert", type=Path, default=None, help=f"PEM certificate (default {paths.tls_cert_path()})")
        _add_verbosity(p)
    make.add_argument("--key", type=Path, default=None, help=f"PEM private key (default {paths.tls_key_path()})")
    make.add_argument("--tls-host", action="append", default=[], metavar="NAME",
                      help="host name or IP the certificate names (repeatable; this machine's name, localhost and "
                           "127.0.0.1 are always added)")

    download = sub.add_parser("download", help="download a Stable Diffusion model, a Michelangelo checkpoint, a "
                                               "Shap-E, Point-E or LION model, or a CLIP model")
    _add_verbosity(download)
    download.add_argument("model", nargs="?", default=DEFAULT_SD_MODEL,
                          help=f"a Stable Diffusion Hugging Face id (default {DEFAULT_SD_MODEL}), or text-ASLDM-256, "
                               f"image-ASLDM-256, shapevae-256 (Michelangelo, with CLIP ViT-L/14), or "
                               f"{', '.join(SHAP_E_MODELS)} (Shap-E), or {', '.join(POINT_E_PRESETS)} (Point-E), or "
                               f"{DEFAULT_CLIP_MODEL} / another open_clip <arch>/<tag> / openai/clip-vit-base-patch32 "
                               f"(CLIP guidance), or {CLIP_MESH_PRIOR} (CLIP-Mesh's diffusion prior), or "
                               f"{', '.join(LION_PRESETS)} (LION's released models)")
    return parser


def _data_dir(args) -> Path:
    if args.data_dir:
        return args.data_dir
    return Path(paths.read_config().get("data_dir") or paths.default_data_dir())


def _device(args, config_class: type | None = None, model: str | None = None):
    """The compute device; on a CPU, warns when the job is a score-distillation one with a real Stable Diffusion model
    (hours per job there)."""
    device = resolve_device(args.device)
    if device.type == "cpu" and config_class is not None and issubclass(config_class, SDSPipelineConfig) \
            and model != TINY_RANDOM:
        log.warning("running on the CPU: a real Stable Diffusion model takes hours per job there; "
                    "use a CUDA GPU (or --model tiny-random for a smoke test)")
    torch.set_grad_enabled(True)
    return device


def _executor(args):
    """The ``serve`` executor: None (the service's local one) or a :class:`RayExecutor`.

    Raises:
        ValueError: Ray flags without ``--executor ray``, a negative ``--ray-workers``, too few GPUs in the cluster.
        ImportError: Ray is not installed.
    """
    if args.executor != "ray":
        if args.ray_address is not None or args.ray_workers:
            raise ValueError("--ray-address and --ray-workers need --executor ray")
        return None
    if args.ray_workers < 0:
        raise ValueError(f"--ray-workers must be >= 0, got {args.ray_workers}")
    return RayExecutor(args.ray_address, args.ray_workers, args.device, args.keep_models, args.allow_download,
                       args.low_vram)


def check_bind(host: str, use_tls: bool, insecure: bool) -> None:
    """Refuse to serve plain TCP on anything but loopback: the token (and every mesh) would cross the network in
    clear. Raises ValueError naming ``--tls`` and ``--insecure``; logs a warning when ``insecure`` allows it."""
    if use_tls or tls.is_loopback(host):
        return
    if not insecure:
        raise ValueError(f"--host {safe_text(host, 80)} is not a loopback address: serve it with --tls (clients pin "
                         f"the certificate's fingerprint), or add --insecure to allow plain TCP there anyway "
                         f"(the token travels in clear; an SSH tunnel to 127.0.0.1 is the safe alternative)")
    log.warning("serving plain TCP on %s (--insecure): tokens, meshes and results cross the network unencrypted",
                host)


def _tls_context(args):
    """``(ssl context, fingerprint)`` for ``serve --tls``, making the home's certificate on first use."""
    if (args.cert is None) != (args.key is None):
        raise ValueError("--cert and --key go together (or give neither for the certificate in the LatentForge home)")
    if args.cert is not None:
        fingerprint = certificate_fingerprint(args.cert)
    else:
        fingerprint, made = ensure_certificate(paths.tls_cert_path(), paths.tls_key_path(),
                                               default_hosts(args.host, args.tls_host))
        if made:
            log.info("made a TLS certificate: %s", paths.tls_cert_path())
    cert, key = args.cert or paths.tls_cert_path(), args.key or paths.tls_key_path()
    try:
        return tls.server_context(cert, key), fingerprint
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot use the TLS certificate {cert} with the key {key}: {err}") from None


def cmd_serve(args) -> int:
    if not args.tls and (args.cert or args.key or args.tls_host):
        raise ValueError("--cert, --key and --tls-host need --tls")
    check_bind(args.host, args.tls, args.insecure)
    token = paths.read_token(args.token_file)
    tokens_file = args.tokens_file or paths.tokens_path()
    Identities(token, tokens_file)  # a broken tokens file stops the server here, before the store opens
    tls_context, fingerprint = _tls_context(args) if args.tls else (None, None)
    max_store_bytes, max_job_age_s = _store_caps(args)
    try:
        executor = _executor(args)
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    models = ModelCache(args.keep_models, args.allow_download, args.low_vram)
    service = JobService(_data_dir(args), _device(args), models,
                         max_store_bytes=max_store_bytes, max_job_age_s=max_job_age_s, executor=executor)
    server = BackendServer(service, token, args.host, args.port, max_payload=args.max_payload_mb << 20,
                           max_connections=args.max_connections, max_client_queue=args.max_client_queue_mb << 20,
                           max_buffered=args.max_buffered_mb << 20, tokens_file=tokens_file,
                           tls_context=tls_context)
    host, port = server.address
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %s: shutting down", signum)
        stop.set()
        server.shutdown()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("LatentForge backend %s on %s:%d, device %s, data %s, %s; %s", __version__, host, port, service.device,
             service.store.data_dir, "TLS" if tls_context else "plain TCP", service.executor.describe())
    if fingerprint:
        print(f"LATENTFORGE_TLS_FINGERPRINT {fingerprint}", flush=True)
    print(f"LATENTFORGE_LISTENING {host} {port}", flush=True)
    server.serve_forever()
    return 0


def _copy_result(folder: Path, out: Path) -> list[Path]:
    """Copy a finished job's ``result.glb`` to ``out``, its ``texture.png`` beside it as ``<out>.png``, its
    ``normal_map.png`` as ``<out>_normal.png`` and each of its result files (``files/<name>``, e.g. VSD's adapter) as
    ``<out>_<name>`` (those that exist); returns the paths written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / "result.glb", out)
    written = [out]
    for name, target in (("texture.png", out.with_suffix(".png")),
                         ("normal_map.png", out.with_name(out.stem + "_normal.png"))):
        if (folder / name).exists():
            shutil.copyfile(folder / name, target)
            written.append(target)
    if (folder / "files").is_dir():
        for path in sorted((folder / "files").iterdir()):
            target = out.with_name(f"{out.stem}_{path.name}")
            shutil.copyfile(path, target)
            written.append(target)
    return written


def cmd_run(args) -> int:
    spec = PIPELINES[args.pipeline]
    params = {f.name: getattr(args, f.name) for f in dataclasses.fields(spec.config_class) if hasattr(args, f.name)}
    params = {k: list(v) if isinstance(v, list) else v for k, v in params.items()}
    inputs = PipelineInputs()
    for mesh_input in spec.mesh_inputs:
        path = getattr(args, mesh_input.group)
        if path is None:
            continue
        try:
            inputs.meshes[mesh_input.group] = load_mesh(path, args.up_axis)
        except MeshError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    for cloud_input in spec.point_inputs:
        path = getattr(args, cloud_input.group)
        if path is None:
            continue
        try:
            inputs.point_clouds[cloud_input.group] = load_point_cloud(path, args.up_axis)
        except MeshError as err:
            print(f"error: --{cloud_input.group.replace('_', '-')}: {err}", file=sys.stderr)
            return 2
    for image_input in spec.image_inputs:
        path = getattr(args, image_input.name)
        if path is None:
            continue
        try:
            inputs.images[image_input.name] = load_image(path)
        except (OSError, ValueError) as err:
            print(f"error: --{image_input.name.replace('_', '-')}: {err}", file=sys.stderr)
            return 2
    device = _device(args, spec.config_class, params.get("model"))
    service = JobService(_data_dir(args), device, ModelCache(1, args.allow_download, args.low_vram),
                         start_worker=False)
    outcome: dict = {}
    progress = ProgressReporter(sys.stderr, enabled=not (args.no_progress or args.quiet))

    def listener(msg_type, fields, arrays):
        if msg_type == "progress":
            progress.update(fields["stage"], fields["step"], fields["total"], fields["losses"], fields["eta_s"])
        elif msg_type in ("result", "error", "cancelled"):
            outcome.update(type=msg_type, fields=fields, arrays=arrays)

    try:
        job_id, _ = service.submit(args.pipeline, params, inputs_to_arrays(inputs), listener=listener)
    except (ValueError, KeyError) as err:
        print(f"error: {_in_flag_words(str(err), spec.config_class, _input_names(spec))}", file=sys.stderr)
        return 2
    try:
        service.run_job(job_id)
    finally:
        progress.close()
    if outcome.get("type") != "result":
        message = _in_flag_words(outcome.get("fields", {}).get("message", ""), spec.config_class,
                                 _input_names(spec))
        print(f"error: job {job_id} {outcome.get('type')}: {message}", file=sys.stderr)
        return 1
    written = _copy_result(service.store.job_dir(job_id), args.out)
    timings = outcome["fields"]["metadata"].get("timings", {})
    print(f"job {job_id} done in {timings.get('total', 0):.1f} s: " + ", ".join(str(p) for p in written))
    return 0


def cmd_jobs(args) -> int:
    store = JobStore(_data_dir(args))
    if args.delete:
        job = store.get(args.delete)
        if job is None:
            print(f"error: no job {safe_text(args.delete, 80)!r} in {store.data_dir}", file=sys.stderr)
            return 2
        if job["status"] not in TERMINAL:
            print(f"error: job {args.delete} is {job['status']}; cancel it first (a running backend owns it)",
                  file=sys.stderr)
            return 2
        store.delete(args.delete)
        print(f"deleted job {args.delete}")
        return 0
    if args.prune:
        max_store_bytes, max_job_age_s = _store_caps(args)
        deleted = store.prune(max_store_bytes, max_job_age_s)
        for job_id, reason in deleted:
            print(f"deleted job {job_id}: {reason}")
        print(f"{len(deleted)} jobs deleted; the store now holds {store.total_bytes() / 1e9:.3f} GB")
        return 0
    if args.export:
        job = store.get(args.export)
        if job is None or job["status"] != "done":
            print(f"error: no finished job {args.export!r}", file=sys.stderr)
            return 2
        if not args.out:
            print("error: --export needs --out", file=sys.stderr)
            return 2
        for path in _copy_result(store.job_dir(args.export), args.out):
            print(path)
        return 0
    rows = store.list(args.limit)
    if not rows:
        print(f"no jobs in {store.data_dir}")
        return 0
    print("\n".join(_job_table(rows)))
    return 0


def _job_table(rows: list[dict]) -> list[str]:
    """``jobs``' listing: a header and one line per job, columns as wide as their longest entry (any pipeline name
    or status lines up); the last column (the error or the prompt) is cut to 100 characters, on one line."""
    table = [("job", "created", "owner", "pipeline", "status", "worker", "took", "prompt / error")]
    for job in rows:
        took = format_duration(job["finished"] - job["started"]) if job["finished"] and job["started"] else "-"
        note = safe_text(job["error"] or job["params"].get("prompt", ""), 100).replace("\n", " ")
        table.append((job["job_id"], time.strftime("%Y-%m-%d %H:%M", time.localtime(job["created"])),
                      safe_text(job.get("owner") or ADMIN_NAME, 32), safe_text(job["pipeline"], 40), job["status"],
                      safe_text(job.get("worker") or "-", 60), took, note))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    return ["  ".join([cell.rjust(w) if i == 6 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
                      + [row[-1]]).rstrip() for row in table]


def cmd_tokens(args) -> int:
    path = args.tokens_file or paths.tokens_path()
    try:
        if args.tokens_command == "add":
            token = add_identity(path, args.name, admin=args.admin)
            role = "admin" if args.admin else "artist"
            if args.out is not None:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(token + "\n")
                os.chmod(args.out, 0o600)
                print(f"added {args.name} ({role}); the token is in {args.out} (give it to {args.name}: it is not "
                      f"stored anywhere else)")
            else:
                print(f"added {args.name} ({role}); the token, shown once (it is not stored):\n{token}")
        elif args.tokens_command == "revoke":
            revoke_identity(path, args.name)
            print(f"revoked {args.name}: its token stops working at its next hello or request")
        else:
            identities = Identities("-", path).names()  # the admin token's value does not matter for listing
            table = [("identity", "role", "token")] + [
                (i.name, i.role, "the token file" if i.name == ADMIN_NAME else f"tokens file {path}")
                for i in identities]
            width = [max(len(r[c]) for r in table) for c in range(2)]
            for row in table:
                print(f"{row[0]:<{width[0]}}  {row[1]:<{width[1]}}  {row[2]}")
    except IdentityError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def cmd_tls(args) -> int:
    cert = args.cert or paths.tls_cert_path()
    try:
        if args.tls_command == "make":
            key = args.key or paths.tls_key_path()
            if (cert.exists() or key.exists()) and not args.force:
                print(f"error: {cert if cert.exists() else key} exists; add --force to replace it (every client then "
                      f"needs the new fingerprint)", file=sys.stderr)
                return 2
            fingerprint = make_certificate(cert, key, default_hosts(None, args.tls_host))
            print(f"made {cert} (key {key})")
        else:
            fingerprint = certificate_fingerprint(cert)
    except CertificateError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"SHA-256 fingerprint: {fingerprint}")
    return 0


def cmd_train(args) -> int:
    config_class, train_fn = TRAINERS[args.trainer]
    params = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class) if hasattr(args, f.name)}
    try:
        result = train_fn(params, progress=not (args.no_progress or args.quiet))
    except ValueError as err:
        print(f"error: {_in_flag_words(str(err), config_class)}", file=sys.stderr)
        return 2
    except (ModelNotFoundError, ImportError) as err:  # CLIP not cached / open_clip unusable
        print(f"error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    last = result.history[-1] if result.history else {}
    losses = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k not in ("step", "lr", "grad_norm"))
    print(f"{args.trainer}: step {result.step} saved in {result.out}" + (f" ({losses})" if losses else ""))
    return 0


def cmd_eval(args) -> int:
    if args.seed < 0:
        print(f"error: --seed = {args.seed} must be >= 0", file=sys.stderr)
        return 2
    metrics = NNA_METRICS if args.metric == "both" else (args.metric,)
    try:
        generated = load_clouds(args.generated, args.points, args.seed, args.normalize)
        reference = load_clouds(args.reference, args.points, args.seed + 1, args.normalize)
        progress = ProgressReporter(sys.stderr, enabled=not args.quiet)
        try:
            scores = evaluate_1nna(generated, reference, metrics,
                                   progress=lambda stage, done, total: progress.update(stage, done, total, {}, None))
        finally:
            progress.close()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"1-NNA over {len(generated)} generated and {len(reference)} reference shapes, {args.points} points each "
          f"(50 % is ideal):")
    for metric, score in scores.items():
        print(f"  1-NNA-{metric.upper()}: {100 * score['acc']:.2f} % (generated {100 * score['acc_generated']:.2f} %, "
              f"reference {100 * score['acc_reference']:.2f} %)")
    return 0


def cmd_download(args) -> int:
    try:
        if args.model in PUBLIC_FILES:
            path = download_public_checkpoint(args.model)
        elif args.model in SHAP_E_MODELS:
            path = download_shap_e(args.model)
        elif args.model in POINT_E_PRESETS:
            path = download_point_e(args.model)
        elif is_clip_model(args.model):
            path = download_clip(args.model)
        elif args.model in PRIOR_MODELS:
            path = download_prior(args.model)
        elif args.model in LION_PRESETS:
            path = download_lion(args.model)
        else:
            path = download_stable_diffusion(args.model)
    except Exception as err:  # noqa: BLE001 — offline, unknown id, hub errors: one line, never a traceback
        log.debug("download of %s failed", args.model, exc_info=True)
        while err.__cause__ is not None:  # the hub's own reason, not our "not on this machine" wrapper
            err = err.__cause__
        text = str(err).strip()
        reason = safe_text(text.splitlines()[0] if text else type(err).__name__, 300)
        where = "openaipublic.azureedge.net" if args.model in POINT_E_PRESETS else "the Hugging Face Hub"
        print(f"error: could not download {safe_text(args.model, 120)!r}: {reason} (is {where} "
              f"reachable from this machine? -v shows the details)", file=sys.stderr)
        return 2
    print(path)
    return 0


def _input_names(spec) -> tuple[str, ...]:
    """The names of a pipeline's input meshes, point clouds and images (each is a ``--<name>`` flag of ``run``)."""
    return tuple(m.group for m in spec.mesh_inputs) + tuple(c.group for c in spec.point_inputs) + \
        tuple(i.name for i in spec.image_inputs)


def _in_flag_words(message: str, config_class: type, input_names: tuple[str, ...] = ()) -> str:
    """A config error in the words of the command line: a field named as a value (``texture_size = 9999 …``,
    ``'prompt'``) becomes the flag the user typed (``--texture-size = 9999 …``); prose is left alone."""
    message = re.sub(r"\b\w+Config\.", "", message)  # "ShapeLDMConfig.grid_resolution" → "grid_resolution"
    for f in sorted(dataclasses.fields(config_class), key=lambda f: -len(f.name)):
        flag = "--" + f.name.replace("_", "-")
        message = re.sub(rf"(?<![\w-]){re.escape(f.name)}(?= = | must )", flag, message)  # "texture_size = 9 …"
        message = message.replace(f"'{f.name}'", f"'{flag}'")  # "missing required parameter 'prompt'"
    for name in input_names:  # "an image (input array 'image')" → "an image (--image)"
        flag = "--" + name.replace("_", "-")
        message = message.replace(f"input array '{name}'", flag).replace(f"input mesh '{name}'", flag) \
            .replace(f"input point cloud '{name}'", flag)
    return message


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if getattr(args, "verbose", False) else (
        logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    logging.basicConfig(level=level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not getattr(args, "verbose", False):  # the hub sets its own loggers' level when it is first imported
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    for noisy in ("httpx", "urllib3", "huggingface_hub", "diffusers", "transformers"):  # their retries are ours to say
        logging.getLogger(noisy).setLevel(logging.DEBUG if getattr(args, "verbose", False) else logging.ERROR)
    try:
        return {"serve": cmd_serve, "run": cmd_run, "train": cmd_train, "eval": cmd_eval, "jobs": cmd_jobs,
                "download": cmd_download, "tokens": cmd_tokens, "tls": cmd_tls}[args.command](args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
