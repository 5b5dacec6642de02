"""Test session settings: headless rendering, no telemetry, no traffic beyond loopback."""

import os
import tempfile

from twin.live.runner import ros_env

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

# ROS environment for every live test module, set before rclpy is imported anywhere: loopback
# discovery, this venv in the ament index (ros_env), logs in a temp dir, a domain of our own so
# parallel sessions do not see each other, unbuffered node logs.
os.environ.update(ros_env(domain_id=100 + os.getpid() % 100,
                          ros_home=os.environ.get("TWINRANK_TEST_ROS_HOME") or tempfile.mkdtemp(prefix="ros-home-")))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "0")
os.environ.pop("ROS_LOCALHOST_ONLY", None)
