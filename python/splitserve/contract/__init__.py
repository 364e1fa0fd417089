"""The container-contract client: worker addresses and the kept-alive HTTP/1.1 pool that both
the data plane (forwarding) and the worker supervisor (health probes) talk to workers with."""
