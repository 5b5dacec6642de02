"""Native libraries the perception wheels link but do not ship.

``pyrealsense2`` and ``open3d`` both link ``libusb-1.0`` (RealSense support) and fail at
import on a machine without it. :func:`preload_libusb` loads the system's copy, or the
``libusb-package`` wheel's (part of ``make install``) when the system has none, before either
is imported. Nothing here imports rclpy.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

_LOADED = False
_O3D: Any = None


def preload_libusb() -> None:
    """Make ``libusb-1.0`` resolvable for wheels that link it (idempotent; a missing
    library is left for the importing package's own error to name)."""
    global _LOADED
    if _LOADED:
        return
    if ctypes.util.find_library("usb-1.0") is None:
        try:
            import libusb_package

            path = libusb_package.get_library_path()
            if path:
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except ImportError:
            pass
    _LOADED = True


def import_open3d() -> Any:
    """``open3d`` with libusb loaded first. Raises ImportError naming the fix."""
    global _O3D
    if _O3D is not None:
        return _O3D
    preload_libusb()
    try:
        import open3d as o3d
    except ImportError as exc:
        raise ImportError(
            f"open3d cannot be imported ({exc}); `pip install open3d-cpu libusb-package` (part of `make install`)"
        ) from exc
    _O3D = o3d
    return o3d


__all__ = ["import_open3d", "preload_libusb"]
