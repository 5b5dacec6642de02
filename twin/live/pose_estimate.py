"""What an object pose estimator returns (markers, model-based registration, their fusion)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class PoseEstimate:
    """One object's pose in the robot base frame, from one method, at one instant.

    ``quality`` is in [0, 1] (1 = best) so methods compare: markers map their reprojection
    error, registration its fitness. ``error`` is the method's own residual in its own unit
    (``error_unit``: "px" reprojection RMS for markers, "m" inlier RMSE for registration).
    """

    name: str
    T_base_obj: np.ndarray  # 4x4 object body frame -> robot base frame
    quality: float
    error: float
    error_unit: str
    method: str  # "marker" | "icp" | "fused"
    cameras: tuple[str, ...] = ()
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def position(self) -> np.ndarray:
        return np.asarray(self.T_base_obj[:3, 3], float)


__all__ = ["PoseEstimate"]
