"""Gateway replicas over one shared state: who this process is, who controls, what to route.

Every gateway process is a replica. One of them at a time, the controller, holds the controller
lease and runs the endpoints' lifecycle and instances; every replica serves both planes and routes
with the routing documents the controller publishes in the store. This part holds the replica's
identity (`view.ReplicaView`), the lease and the store's cluster tables; the face wires them to the
planes (`wiring/replicas.py`). It imports nothing of the package but common.
"""
