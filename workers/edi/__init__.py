"""The EDI channel's edges: file-drop transport, control numbers, state, handlers."""
