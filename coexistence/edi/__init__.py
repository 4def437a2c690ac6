"""X12 004010 for the EDI channel: syntax, documents, acknowledgments, partner profiles.

Pure code (no I/O): ``x12`` reads and writes interchanges, ``validate`` checks
segments against a small 004010 dictionary, ``documents`` maps 850/855/856/810
to and from the canonical model, ``acks`` builds and reads 997 and TA1, and
``profiles`` is the typed trading-partner configuration.  Transport, control
numbers and the handlers live in ``workers/edi``.
"""
