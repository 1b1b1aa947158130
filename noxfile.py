"""Every task a developer or CI runs, as nox sessions (names are a contract: DESIGN.md §8).

nox drives uv: each session gets its own virtualenv made by uv with the machine's Python
(uv never downloads an interpreter here: see ``[tool.uv]`` in pyproject.toml), into which
``uv sync`` installs the whole workspace from ``uv.lock``.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["lint", "typecheck", "tests", "integration"]

ROOT = Path(__file__).parent
PACKAGES = ["tikv-proto", "tikv-pd", "tikv-raw", "tikv-txn", "tikv-mockstore", "tikv-cli"]
PROTO_DIR = ROOT / "packages" / "tikv-proto" / "proto"
PROTO_OUT = ROOT / "packages" / "tikv-proto" / "src"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def _sync(session: nox.Session, *groups: str) -> None:
    """Install the workspace (every package, editable) and the named dependency groups."""
    args = ["uv", "sync", "--frozen", "--no-default-groups", "--inexact"]
    for group in groups:
        args += ["--group", group]
    session.run_install(
        *args,
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
        silent=True,
    )


def _missing(session: nox.Session, what: str) -> None:
    session.error(f"{what} does not exist yet; this session has nothing real to run.")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit tests of every package (packages/*/tests)."""
    _sync(session, "test")
    session.run("pytest", "packages", *session.posargs)


@nox.session(python=PYTHON)
def integration(session: nox.Session) -> None:
    """The shared integration suite (tests-integration/) on the embedded cluster.

    Set TIKV_PD_ENDPOINTS=host:port,... to run it against a real cluster instead.
    """
    if not any((ROOT / "tests-integration").rglob("test_*.py")):
        _missing(session, "The integration suite (tests-integration/test_*.py)")
    _sync(session, "test")
    # The interop scenarios install third-party clients; they run in their own session.
    session.run("pytest", "tests-integration", "-m", "not interop", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Ruff over the whole tree (generated protobuf modules excluded)."""
    _sync(session, "lint")
    session.run("ruff", "check", ".", *session.posargs)
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over every package's sources."""
    _sync(session, "typing")
    sources = [f"packages/{p}/src" for p in PACKAGES]
    session.run("mypy", *sources, *session.posargs)


def _generate(session: nox.Session, out: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    bin_dir = Path(session.virtualenv.location) / "bin"
    session.run(
        "python",
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
        env={"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
        silent=True,
    )


def _generated_files(base: Path) -> dict[str, Path]:
    pkg = base / "tikv_proto"
    return {p.name: p for p in pkg.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}


@nox.session(python=PYTHON)
def proto(session: nox.Session) -> None:
    """Regenerate the protobuf / gRPC modules; ``-- --check`` fails if the committed ones drift."""
    _sync(session, "proto")
    check = "--check" in session.posargs
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        _generate(session, out)
        fresh = _generated_files(out)
        committed = _generated_files(PROTO_OUT)
        drift = sorted(
            set(fresh) ^ set(committed)
            | {
                n
                for n in set(fresh) & set(committed)
                if not filecmp.cmp(fresh[n], committed[n], shallow=False)
            }
        )
        if check:
            if drift:
                session.error(
                    f"generated modules drift from the .proto files ({', '.join(drift)}); "
                    "run `nox -s proto` and commit the result"
                )
            session.log(f"{len(fresh)} generated modules match the .proto files")
            return
        for name in set(committed) - set(fresh):
            committed[name].unlink()
        for name, path in fresh.items():
            shutil.copyfile(path, PROTO_OUT / "tikv_proto" / name)
        session.log(f"wrote {len(fresh)} generated modules ({len(drift)} changed)")


@nox.session(python=PYTHON)
def build(session: nox.Session) -> None:
    """Build a wheel of every package, install each alone into a clean venv and import it."""
    session.install("uv")
    with tempfile.TemporaryDirectory() as tmp:
        dist = Path(tmp) / "dist"
        session.run("uv", "build", "--all-packages", "--wheel", "-o", str(dist), silent=True)
        wheels = sorted(dist.glob("*.whl"))
        built = {w.name.split("-")[0].replace("_", "-") for w in wheels}
        if built != set(PACKAGES):
            session.error(f"expected wheels for {sorted(PACKAGES)}, built {sorted(built)}")
        for package in PACKAGES:
            venv = Path(tmp) / f"venv-{package}"
            session.run("uv", "venv", "--quiet", "--python", sys.executable, str(venv))
            py = venv / "bin" / "python"
            # Sibling wheels come from dist/, third-party dependencies from the index:
            # each package gets exactly its declared dependencies, nothing from the workspace.
            session.run(
                "uv",
                "pip",
                "install",
                "--quiet",
                "--python",
                str(py),
                "--find-links",
                str(dist),
                package,
                silent=True,
            )
            module = package.replace("-", "_")
            session.run(
                str(py),
                "-c",
                f"import {module}; print({module}.__name__, {module}.__version__)",
                external=True,
            )
            listed = subprocess.run(
                ["uv", "pip", "list", "--python", str(py), "--format", "freeze"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            tikv = sorted(
                line.split("==")[0] for line in listed.splitlines() if line.startswith("tikv-")
            )
            session.log(f"{package}: installed alone with {tikv}")


@nox.session(python=PYTHON)
def interop(session: nox.Session) -> None:
    """Third-party clients (tikv-client, tikv-python) against the mock store, one process each."""
    if not (ROOT / "tests-integration" / "interop").is_dir():
        _missing(session, "The interop scenarios (tests-integration/interop/)")
    _sync(session, "test")
    # Each peer client gets its own virtualenv, built with uv (cached in .nox/interop-venvs).
    uv = shutil.which("uv")
    if uv is None:
        session.install("uv")
        uv = str(Path(session.virtualenv.location) / "bin" / "uv")
    session.run(
        "pytest",
        "tests-integration/interop",
        "-m",
        "interop",
        *session.posargs,
        env={"TIKV_INTEROP_UV": uv},
    )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks: this project against the other Python clients on one embedded cluster."""
    if not (ROOT / "benchmarks" / "run.py").exists():
        _missing(session, "The benchmark harness (benchmarks/run.py)")
    _sync(session, "test", "bench")
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The quickstart tour: an embedded cluster, raw and transactional operations, printed."""
    if not (ROOT / "packages" / "tikv-cli" / "src" / "tikv_cli" / "main.py").exists():
        _missing(session, "The `tikv demo` command (tikv-cli)")
    _sync(session)
    session.run("tikv", "demo", *session.posargs)
