"""Build hook: generates the gRPC code from protos/ before the Python files are collected, so a
wheel or sdist built from a clean clone (python -m build, pip install .) carries it. Everything
else about the package is declared in pyproject.toml."""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTOS = ROOT / "protos"


class BuildPyWithProtos(build_py):
    """build_py that first runs grpc_tools.protoc on protos/recsvc/v1/*.proto (the generated
    modules land beside the hand-written ones in recsvc/v1, where imports expect them)."""

    def run(self) -> None:
        from grpc_tools import protoc

        for proto in sorted((PROTOS / "recsvc" / "v1").glob("*.proto")):
            arguments = [
                "grpc_tools.protoc",
                f"-I{PROTOS}",
                f"--python_out={ROOT}",
                f"--pyi_out={ROOT}",
                f"--grpc_python_out={ROOT}",
                str(proto),
            ]
            if protoc.main(arguments) != 0:
                raise RuntimeError(f"protoc failed on {proto}")
        super().run()


setup(cmdclass={"build_py": BuildPyWithProtos})
