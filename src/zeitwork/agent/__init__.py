"""The node agent (``zeitwork node-agent``): registers with the operator, heartbeats, and
converges the instances assigned to its node onto a runtime driver.

``main`` is the composition root; ``supervisor`` (with the pure ``plan``) keeps instances
where they should be; ``operator_link`` talks to the operator; ``api`` is the agent's HTTP API;
``network`` is the only code touching links and firewall rules. See ``docs/node-agent.md``.
"""

from __future__ import annotations

from zeitwork.agent.settings import AgentSettings

__all__ = ["AgentSettings"]
