"""The governed API (``coexist api serve``): FastAPI on Starlette under uvicorn.

* ``app``: routes, problems, correlation ids; ``deps``: what it needs, from the ``App``;
* ``auth``: consumers (token hashes, roles, customer scopes);
* ``sor``: reads from each record's system of record, and the inquiry cache;
* ``queries``: records by foreign key, per ERP; ``service``: inquiry and order intake;
* ``idempotency``: the Idempotency-Key store; ``schemas``: request and response bodies.
"""
