"""colcon (ament_python) build of the ROS 2 package `twin`.

Installs thin executables into lib/twin/ (setuptools entry points calling
twin.live.<node>:main), the launch file into share/twin/launch/, package.xml and the ament
index marker. The twinrank Python package itself (twin.live.*) is not part of this package:
install it (pip install -e <repo>) into the Python that colcon and ros2 use; see
ros_ws/README.md.
"""

import os

from setuptools import setup

PACKAGE = "twin"
NODES = ("franka_bridge", "camera_bridge", "object_tracker", "twin_sync", "policy_runner", "recorder")
HERE = os.path.dirname(os.path.abspath(__file__))
# the launch file lives at the repository root (launch/); setuptools wants paths relative to here
LAUNCH = os.path.relpath(os.path.join(HERE, "..", "..", "..", "launch", "live.launch.py"), HERE)
if not os.path.isfile(os.path.join(HERE, LAUNCH)):
    raise SystemExit(
        f"twin: launch file {os.path.normpath(os.path.join(HERE, LAUNCH))} not found; build ros_ws "
        f"inside the twinrank repository checkout"
    )

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=[],
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", [LAUNCH]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="Twinrank",
    maintainer_email="twinrank@example.com",
    description="Twinrank live twin nodes and launch file (thin entry points into twin.live).",
    license="Apache-2.0",
    entry_points={"console_scripts": [f"{n} = twin.live.{n}:main" for n in NODES]},
)
