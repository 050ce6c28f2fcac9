"""What every long-running service shares, below the services and above the proxy core
(issue 15's serving layer): the pre-fork supervisor and its worker policy (``prefork``),
the versioned long-poll watch of operator state (``poll``), the admin listener on the
proxy core (``admin``), handing the listening sockets
to a successor on a restart (``handoff``, ``steering``) and systemd socket activation
(``activation``). Atomic file writes live lower, in ``zeitwork.core.files``, so that every
layer can use them."""
