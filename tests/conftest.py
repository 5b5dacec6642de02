"""Test session settings: headless rendering, no telemetry, no traffic beyond loopback."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
