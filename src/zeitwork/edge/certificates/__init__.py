"""Certificate sources of the edge (static files, internal CA, ACME) and their store."""
