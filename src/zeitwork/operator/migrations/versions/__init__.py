"""Migration revisions, oldest first (numbered ids: 0001, 0002, ...)."""
