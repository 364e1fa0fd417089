"""Feedback by inference id and the live experiment view (README, "Closing the loop").

`index.py` keeps every answered invocation (off the request path) in the state database;
`records.py` reads label records in SageMaker's ground-truth format; `store.py` holds the tables
and joins each label exactly once; `service.py` counts outcomes and keeps each endpoint's live
experiment (`evaluation.sequential`); `routes.py` is the HTTP side; `client.py` is the stdlib
client behind `splitserve.feedback(...)`.
"""
