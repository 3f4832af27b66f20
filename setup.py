"""Builds the container shim (``native/runc_shim.c``) at ``pip install`` time.

The shim is a standalone executable, not a Python extension: one runs per container and must
stay under 1 MiB resident, which a process carrying an interpreter cannot. cffi's own build path
(``cffi_modules`` → ``build_ext`` → the distutils compiler) produces extension modules only, so
this hooks the same ``build_ext`` step and links an executable with the same compiler machinery
(``new_compiler`` + ``customize_compiler``, honouring ``CC``/``CFLAGS`` as cffi builds do).
It is linked statically when the C library allows (smaller and faster to start: no dynamic
loader), dynamically otherwise. The result lands in ``thingdoer/oci/_bin/runc_shim`` — in the
source tree for an editable install, in the wheel otherwise (``oci/shim.py`` finds it there).
Everything else about the package is in ``pyproject.toml``.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
SOURCES = ["native/runc_shim.c"]
TARGET = Path("thingdoer", "oci", "_bin", "runc_shim")


class BuildShim(build_ext):
    """``build_ext`` that also compiles and links the shim executable."""

    def run(self) -> None:
        super().run()
        from distutils.ccompiler import new_compiler
        from distutils.errors import CompileError, LinkError
        from distutils.sysconfig import customize_compiler

        compiler = new_compiler(force=self.force)
        customize_compiler(compiler)
        # The compiler's default flags are libpython's (-fPIC, -g, ...): fine for an
        # executable too; -O2 and warnings are what this file asks for itself.
        objects = compiler.compile([str(HERE / s) for s in SOURCES], output_dir=self.build_temp,
                                   extra_postargs=["-O2", "-Wall", "-Wextra"])
        out = self._target()
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            compiler.link_executable(objects, out.name, output_dir=str(out.parent),
                                     extra_postargs=["-static"])
        except (LinkError, CompileError):  # no static C library here: link dynamically
            compiler.link_executable(objects, out.name, output_dir=str(out.parent))
        os.chmod(out, 0o755)

    def _target(self) -> Path:
        if self.inplace or getattr(self, "editable_mode", False):
            return HERE / TARGET
        return Path(self.build_lib) / TARGET

    def get_outputs(self) -> list[str]:
        return [*super().get_outputs(), str(self._target())]


class NativeDistribution(Distribution):
    """The wheel holds a native executable: it is platform-specific, and ``build_ext`` runs."""

    def has_ext_modules(self) -> bool:
        return True


setup(distclass=NativeDistribution, cmdclass={"build_ext": BuildShim})
