"""Use cases that combine several stores (and the token cache) in one transaction."""
