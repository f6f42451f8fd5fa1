"""The control plane: peer handshake, mesh membership, liveness, routing, status.

protocol.py  wire format of control connections and data-path heartbeats
mesh.py      ControlPlane: connections, gossip, liveness, routes to the dataplane
routing.py   shortest paths over established connections
discovery.py membership through the cluster store (`--store`): wired by router.py, the
             control plane does not import it
status.py    the local HTTP API (/status, /metrics, /connect, /forget)
cli.py       `weavefast status|report|connect|forget`
"""
from dataplane.control.mesh import ControlConfig, ControlPlane

__all__ = ["ControlConfig", "ControlPlane"]
