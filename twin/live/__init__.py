"""The live twin over ROS 2: bridges to the real cell, twin sync, policy-in-twin, recorder.

Modules (each node module has ``create_node(cli_args=None)`` and ``main(argv=None)``):

- :mod:`twin.live.interfaces`: topic / service names, joint names, status JSON, node
  parameters: the contract every node and test uses.
- :mod:`twin.live.graph`: the node graph described once (``live_graph``, ``LAUNCH_ARGUMENTS``);
  ``launch/live.launch.py`` and :mod:`twin.live.runner` both build from it.
- :mod:`twin.live.twin_sync`, :mod:`twin.live.policy_runner`, :mod:`twin.live.recorder`: nodes.
- :mod:`twin.live.franka_bridge`, :mod:`twin.live.camera_bridge`: hardware bridges (franky,
  pyrealsense2).
- :mod:`twin.lifeline` (shared with the evaluator's workers): child processes end with their
  parent (parent-death signal + parent watch); leftovers of another run are refused.

Importing this package does not import rclpy (only the node modules and the runner do).
"""
