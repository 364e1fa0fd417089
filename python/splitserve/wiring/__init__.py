"""The face's wiring: how the parts are put together into one gateway (app keys, the fleet
deployer between control plane, supervisor and data plane, the error boundary, SigV4)."""
