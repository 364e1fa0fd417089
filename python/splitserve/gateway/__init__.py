"""The glue between the control plane, the worker supervisor and the data plane."""
