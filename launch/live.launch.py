"""ros2 launch twin live.launch.py robot_ip:=172.16.0.2 cameras:=cam_left=<serial> [use_fake_hardware:=true]

The live twin: franka_bridge, camera_bridge, twin_sync, policy_runner, recorder. The graph is
not defined here: every launch argument comes from ``twin.live.graph.LAUNCH_ARGUMENTS`` and
the nodes from ``twin.live.graph.live_graph`` (the tests start the same graph with plain
rclpy). Needs ``launch`` / ``launch_ros`` (a ROS 2 Jazzy install) and the twinrank Python
package importable by the Python running ``ros2 launch``. See launch/README.md.

Every node (and the franka-sim it may start) ends when this launch process dies, by any
signal: each node ties itself to its parent at start (``twin.lifeline``), and
``TWINRANK_PARENT_PID`` tells it which PID that must be. Arguments are validated by
``live_graph`` before any node starts.
"""

import os

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription
from twin.live.graph import LAUNCH_ARGUMENTS, live_graph, parse_launch_arguments


def _nodes(context, *args, **kwargs):
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in LAUNCH_ARGUMENTS}
    actions = []
    parent = {"TWINRANK_PARENT_PID": str(os.getpid())}  # nodes end with this process (twin.lifeline)
    for desc in live_graph(**parse_launch_arguments(values)):
        # value_type keeps e.g. a string parameter '1' a string (launch_ros YAML-parses strings)
        params = {k: ParameterValue(v, value_type=type(v)) for k, v in desc.parameters.items()}
        actions.append(
            Node(
                package=desc.package,
                executable=desc.executable,
                name=desc.name,
                parameters=[params],
                remappings=list(desc.remaps),
                output="screen",
                emulate_tty=True,
                additional_env=parent,
            )
        )
    return actions


def generate_launch_description():
    return LaunchDescription(
        [
            *[
                DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
                for a in LAUNCH_ARGUMENTS
            ],
            OpaqueFunction(function=_nodes),
        ]
    )
