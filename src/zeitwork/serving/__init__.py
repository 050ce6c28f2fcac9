"""What every long-running service shares, below the services and above the proxy core
(issue 15's serving layer): handing the listening sockets to a successor on a restart
(``handoff``, ``steering``) and systemd socket activation (``activation``)."""
