"""What ``zeitwork dev`` starts, with which environment, in which order."""

from __future__ import annotations

from pathlib import Path

from zeitwork.cli.dev_cmd import preflight
from zeitwork.cli.dev_plan import (
    AGENT,
    EDGE,
    LB,
    OPERATOR,
    START_ORDER,
    STOP_ORDER,
    DevConfig,
    DevPorts,
    agent_spec,
    base_environment,
    edge_spec,
    lb_spec,
    operator_spec,
    summary,
)

CONFIG = DevConfig(
    data_dir=Path("/var/tmp/zw"),
    ports=DevPorts(
        operator=1080,
        agent=1081,
        lb=1082,
        edge_http=1083,
        edge_https=1443,
        lb_admin=2082,
        edge_admin=2083,
    ),
    python="/venv/bin/python",
)
PARENT = {
    "PATH": "/usr/bin",
    "PORT": "9999",
    "HOST": "0.0.0.0",
    "OPERATOR_URL": "http://elsewhere:1",
    "ZEITWORK_JOIN_TOKEN": "stale",
    "LB_BACKENDS": "10.0.0.1:80",
    "ZEITWORK_BRIDGE": "zwtest0",
}


def test_stop_order_is_the_reverse_of_start_order() -> None:
    assert START_ORDER == (OPERATOR, AGENT, LB, EDGE)
    assert STOP_ORDER == (EDGE, LB, AGENT, OPERATOR)


def test_base_environment_drops_per_service_variables_and_keeps_the_rest() -> None:
    env = base_environment(PARENT, CONFIG)
    for name in ("PORT", "HOST", "OPERATOR_URL", "ZEITWORK_JOIN_TOKEN", "LB_BACKENDS"):
        assert name not in env
    assert env["PATH"] == "/usr/bin"
    assert env["ZEITWORK_BRIDGE"] == "zwtest0"  # agent settings pass through
    assert env["ZEITWORK_DATA_DIR"] == "/var/tmp/zw"
    assert env["ENVIRONMENT"] == "development"
    assert base_environment({"ENVIRONMENT": "staging"}, CONFIG)["ENVIRONMENT"] == "staging"


def test_each_service_gets_its_own_port_url_and_token() -> None:
    base = base_environment(PARENT, CONFIG)
    op = operator_spec(CONFIG, base)
    assert op.argv == ("/venv/bin/python", "-m", "zeitwork", "operator")
    assert (op.env["PORT"], op.env["HOST"]) == ("1080", "127.0.0.1")
    assert "OPERATOR_URL" not in op.env
    assert op.ready_url == "http://127.0.0.1:1080/health/ready"

    agent = agent_spec(CONFIG, base, join_token="zw_join")
    assert agent.argv[-2:] == ("node-agent", "--drain")  # nothing left running in dev
    assert agent.env["ZEITWORK_JOIN_TOKEN"] == "zw_join"
    assert agent.env["OPERATOR_URL"] == "http://127.0.0.1:1080"
    assert agent.env["PORT"] == "1081"
    assert agent.ready_url == "http://127.0.0.1:1081/health"

    lb = lb_spec(CONFIG, base, proxy_token="zw_proxy")
    assert lb.env["ZEITWORK_PROXY_TOKEN"] == "zw_proxy"
    assert (lb.env["PORT"], lb.env["LB_ADMIN_PORT"]) == ("1082", "2082")
    assert "LB_BACKENDS" not in lb.env
    assert lb.env["LB_TRUSTED_PROXIES"] == "127.0.0.1"  # the edge's forwarding is kept
    assert lb.ready_url == "http://127.0.0.1:2082/health"

    edge = edge_spec(CONFIG, base, proxy_token="zw_proxy")
    assert edge.env["ZEITWORK_PROXY_TOKEN"] == "zw_proxy"
    assert edge.env["LOAD_BALANCER_URL"] == "http://127.0.0.1:1082"
    assert (edge.env["PORT"], edge.env["EDGE_HTTPS_PORT"]) == ("1083", "1443")
    assert edge.env["EDGE_TLS_MODE"] == "internal"
    assert edge.env["EDGE_HTTPS_REDIRECT"] == "false"
    assert edge.ready_url == "http://127.0.0.1:2083/health"


def test_user_choices_for_the_edge_win_over_dev_defaults() -> None:
    base = base_environment({"EDGE_HTTPS_REDIRECT": "true", "LB_WORKERS": "2"}, CONFIG)
    assert edge_spec(CONFIG, base, proxy_token="t").env["EDGE_HTTPS_REDIRECT"] == "true"
    assert lb_spec(CONFIG, base, proxy_token="t").env["LB_WORKERS"] == "2"


def test_wildcard_host_still_reaches_the_load_balancer_on_loopback() -> None:
    config = DevConfig(data_dir=Path("/d"), host="0.0.0.0")
    edge = edge_spec(config, {}, proxy_token="t")
    assert edge.env["LOAD_BALANCER_URL"] == "http://127.0.0.1:8082"
    assert edge.env["HOST"] == "0.0.0.0"
    agent = agent_spec(config, {}, join_token="j")
    assert agent.env["OPERATOR_URL"] == "http://127.0.0.1:8080"
    assert agent.env["HOST"] == "0.0.0.0"


def test_port_clashes_are_named() -> None:
    assert DevPorts().clashes() == []
    assert DevPorts(agent=8080, lb_admin=8083).clashes() == [8080, 8083]


def test_summary_names_the_urls_token_file_and_ca() -> None:
    text = summary(CONFIG, admin_token_source="/var/tmp/zw/admin-token")
    assert "http://127.0.0.1:1080/api/v1" in text
    assert "http://127.0.0.1:1083" in text
    assert "/var/tmp/zw/admin-token" in text
    assert "/var/tmp/zw/edge/ca/ca.crt" in text
    assert "export OPERATOR_URL=http://127.0.0.1:1080" in text


def test_preflight_needs_root_and_the_tools() -> None:
    problem = preflight(euid=1000, runtime="runc")
    assert problem is not None and "needs root" in problem and "sudo" in problem
    missing = preflight(euid=0, runtime="no-such-runtime-xyz")
    assert missing is not None and "no-such-runtime-xyz is not installed" in missing


def test_ports_in_use_are_named_with_their_option() -> None:
    import socket

    from zeitwork.cli.dev_cmd import ports_in_use

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        busy = ports_in_use(
            [("--lb-port", "127.0.0.1", taken), ("--agent-port", "127.0.0.1", free)]
        )
    assert len(busy) == 1 and busy[0].startswith(f"--lb-port {taken} (127.0.0.1:")
