"""The operator's web console: server-rendered pages on ``/`` signed in with an API token.

``routes.router`` is mounted by ``operator/app.py``; ``session`` is pure and also used by
``operator/api/security.py`` so the console's cookie authenticates the API's GETs (the
pages' event and log streams). Import nothing heavy here: ``security`` imports this package.
"""

from __future__ import annotations

from zeitwork.operator.console.session import COOKIE_NAME, console_authorization

__all__ = ["COOKIE_NAME", "console_authorization"]
