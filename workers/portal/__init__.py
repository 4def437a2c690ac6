"""The B2B portal channel: signed webhooks (Standard Webhooks) to customers' endpoints.

* ``endpoints``: the endpoint registry, secrets and audit;
* ``events``: canonical events -> queued webhook messages (the channel handler);
* ``delivery``: the dispatcher (lanes per endpoint, retries, disables, dead letters);
* ``signing``: Standard Webhooks signatures;
* ``store``: the delivery, attempt and object-state tables;
* ``asgi``: ``read_body``, the request body of the small ASGI receivers.
"""
