"""The coexistence router at run time: change capture, writer actors, commands, fan-out.

The decisions themselves are pure (``coexistence.router``); this package feeds
them captured changes and carries them out through the transactional outbox,
so a crash anywhere loses nothing and repeats nothing that matters.
"""
