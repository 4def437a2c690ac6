"""The cutover console: one read-only web page over the CLI's own queries."""
