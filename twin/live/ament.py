"""Register the ROS 2 package ``twin`` in an install prefix (a venv) without colcon.

``ros2 launch twin live.launch.py`` and ``ros2 run twin <node>`` find a package through the
ament index under ``$AMENT_PREFIX_PATH``: ``share/ament_index/resource_index/packages/twin``
(an empty marker), ``share/twin/package.xml``, ``share/twin/launch/live.launch.py`` and
executables in ``lib/twin/``.

A regular ``pip install .`` / wheel install of twinrank writes these files into the prefix
(``[tool.setuptools.data-files]`` in pyproject.toml). An editable install (``pip install
-e .``, what ``make install`` does) does not install data files; :func:`install_ament`
(``twinrank live install-ament``, called by ``make install``) writes them instead. This
module does not import rclpy.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

from twin.live.interfaces import NODES, ROS_PACKAGE

REPO = Path(__file__).resolve().parents[2]
PKG_SRC = REPO / "ros_ws" / "src" / ROS_PACKAGE
LAUNCH_FILES = ("live.launch.py",)


def _sources(prefix_fallback: Path) -> dict[str, Path]:
    """Relative install path -> source file (the repository checkout, else an installed prefix)."""
    out: dict[str, Path] = {}
    if PKG_SRC.is_dir():
        out[f"share/ament_index/resource_index/packages/{ROS_PACKAGE}"] = PKG_SRC / "resource" / ROS_PACKAGE
        out[f"share/{ROS_PACKAGE}/package.xml"] = PKG_SRC / "package.xml"
        for f in LAUNCH_FILES:
            out[f"share/{ROS_PACKAGE}/launch/{f}"] = REPO / "launch" / f
        for n in NODES:
            out[f"lib/{ROS_PACKAGE}/{n}"] = PKG_SRC / "scripts" / n
    else:  # installed from a wheel: copy what pip put into sys.prefix
        for rel in installed_files():
            out[rel] = prefix_fallback / rel
    missing = [str(p) for p in out.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"cannot register the ROS 2 package {ROS_PACKAGE!r}: missing {missing}")
    return out


def installed_files() -> list[str]:
    """The files (relative to a prefix) that make up the registered package."""
    files = [f"share/ament_index/resource_index/packages/{ROS_PACKAGE}", f"share/{ROS_PACKAGE}/package.xml"]
    files += [f"share/{ROS_PACKAGE}/launch/{f}" for f in LAUNCH_FILES]
    files += [f"lib/{ROS_PACKAGE}/{n}" for n in NODES]
    return files


def install_ament(prefix: str | os.PathLike[str] | None = None, symlink: bool = False) -> list[Path]:
    """Write the package's ament files into ``prefix`` (default: ``sys.prefix``, the venv).
    ``symlink`` links to the repository's files instead of copying (edits show at once).
    Returns the written paths."""
    dst_root = Path(prefix if prefix is not None else sys.prefix).resolve()
    written = []
    for rel, src in _sources(Path(sys.prefix)).items():
        dst = dst_root / rel
        if dst.resolve() == src.resolve():
            written.append(dst)
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        if symlink:
            dst.symlink_to(src)
        else:
            shutil.copyfile(src, dst)
            if rel.startswith(f"lib/{ROS_PACKAGE}/"):
                dst.chmod(dst.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        written.append(dst)
    return written


def check_ament(prefix: str | os.PathLike[str] | None = None) -> list[str]:
    """Problems with the registration in ``prefix`` (empty list when complete)."""
    root = Path(prefix if prefix is not None else sys.prefix)
    problems = []
    for rel in installed_files():
        p = root / rel
        if not p.is_file():
            problems.append(f"missing {p}")
        elif rel.startswith(f"lib/{ROS_PACKAGE}/") and not os.access(p, os.X_OK):
            problems.append(f"not executable: {p}")
    return problems


__all__ = ["install_ament", "check_ament", "installed_files"]
