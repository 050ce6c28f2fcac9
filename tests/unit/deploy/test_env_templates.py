"""The env templates in deployments/config match the services' settings classes.

Every variable a service reads is documented in its template; every variable in a template is
one the service reads; every value (active or commented out) is valid; a commented-out value
of a setting that has a default is that default.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices, SecretStr
from pydantic_settings import BaseSettings

from tests.unit.deploy.unitfile import CONFIG_DIR, SERVICES
from zeitwork.settings import ServiceSettings, SettingsError, parse_settings

SETTINGS_MODULES = {
    "operator": "zeitwork.operator.settings",
    "node-agent": "zeitwork.agent.settings",
    "load-balancer": "zeitwork.lb.settings",
    "edge-proxy": "zeitwork.edge.settings",
    "builder": "zeitwork.builder.settings",
}

# "KEY=value" (active) or "#KEY=value" (optional, shown with its default). Prose comments
# have a space after "#", so they never look like a variable.
VARIABLE = re.compile(r"^(#?)([A-Z][A-Z0-9_]*)=(.*)$")


def template_path(service: str) -> Path:
    return CONFIG_DIR / f"{service}.env"


def read_template(service: str) -> list[tuple[bool, str, str]]:
    """(active, name, value) for each variable line, in order."""
    entries = []
    for line in template_path(service).read_text(encoding="utf-8").splitlines():
        match = VARIABLE.match(line)
        if match:
            entries.append((match.group(1) == "", match.group(2), match.group(3)))
        else:
            assert line == "" or line.startswith("# ") or line == "#", (
                f"{service}.env: neither a variable nor a comment: {line!r}"
            )
    return entries


def settings_class(service: str) -> type[ServiceSettings]:
    try:
        module = importlib.import_module(SETTINGS_MODULES[service])
    except ModuleNotFoundError:
        pytest.skip(f"{SETTINGS_MODULES[service]} does not exist yet")
    classes = [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, ServiceSettings)
        and obj is not ServiceSettings
        and obj.__module__ == module.__name__
    ]
    assert len(classes) == 1, f"expected one settings class in {module.__name__}: {classes}"
    return classes[0]


def variables_of(cls: type[BaseSettings]) -> dict[str, str]:
    """Environment variable name -> field name."""
    names: dict[str, str] = {}
    for field_name, info in cls.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, str):
            names[alias.upper()] = field_name
        elif isinstance(alias, AliasChoices):
            for choice in alias.choices:
                if isinstance(choice, str):
                    names[choice.upper()] = field_name
        else:
            names[field_name.upper()] = field_name
    return names


def plain(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No variable of any service leaks in from the test's own environment."""
    for service in SERVICES:
        try:
            cls = settings_class(service)
        except pytest.skip.Exception:
            continue
        for name in variables_of(cls):
            monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_one_template_per_service() -> None:
    assert sorted(p.name for p in CONFIG_DIR.glob("*.env")) == sorted(f"{s}.env" for s in SERVICES)


@pytest.mark.parametrize("service", SERVICES)
def test_template_is_well_formed(service: str) -> None:
    entries = read_template(service)
    names = [name for _, name, _ in entries]
    assert len(names) == len(set(names)), f"{service}.env names a variable twice"
    for active, name, value in entries:
        # An active empty value is not "unset": it would be read as an empty string.
        assert not (active and value == ""), f"{service}.env: {name}= is active but empty"
    active = {name: value for is_active, name, value in entries if is_active}
    assert active.get("ENVIRONMENT") == "production"
    assert active.get("ZEITWORK_DATA_DIR") == f"/var/lib/zeitwork/{service}"


@pytest.mark.parametrize("service", SERVICES)
def test_template_names_only_variables_the_service_reads(service: str) -> None:
    known = variables_of(settings_class(service))
    unknown = [name for _, name, _ in read_template(service) if name not in known]
    assert unknown == [], f"{service}.env sets variables the service ignores: {unknown}"


@pytest.mark.parametrize("service", SERVICES)
def test_template_documents_every_variable(service: str) -> None:
    known = variables_of(settings_class(service))
    documented = {name for _, name, _ in read_template(service)}
    # One name per field is enough when a field accepts several.
    missing = sorted(
        name
        for name, field_name in known.items()
        if name not in documented and not any(known[d] == field_name for d in documented)
    )
    assert missing == [], (
        f"add these to deployments/config/{service}.env (as '#NAME=default' with a comment): "
        f"{missing}"
    )


@pytest.mark.parametrize("service", SERVICES)
def test_active_values_make_valid_settings(service: str, clean_env: pytest.MonkeyPatch) -> None:
    cls = settings_class(service)
    active = {name: value for is_active, name, value in read_template(service) if is_active}
    try:
        parse_settings(cls, **active)
    except SettingsError as exc:
        pytest.fail(f"{service}.env as shipped is invalid: {exc}")


@pytest.mark.parametrize("service", SERVICES)
def test_commented_values_are_valid_and_defaults_are_true(
    service: str, clean_env: pytest.MonkeyPatch
) -> None:
    cls = settings_class(service)
    known = variables_of(cls)
    entries = read_template(service)
    active = {name: value for is_active, name, value in entries if is_active}
    baseline = parse_settings(cls, **active)
    commented = {name: value for is_active, name, value in entries if not is_active}
    computed = {  # "#NAME=" for a default computed at start (e.g. one worker per core)
        name
        for name, value in commented.items()
        if value == "" and cls.model_fields[known[name]].default_factory is not None
    }
    # Some settings only make sense together (a certificate and its key): all the optional
    # lines switched on at once must make a valid configuration.
    try:
        enabled = {name: value for name, value in commented.items() if name not in computed}
        parse_settings(cls, **{**active, **enabled})
    except SettingsError as exc:
        pytest.fail(f"{service}.env with every optional line enabled is invalid: {exc}")
    wrong = []
    for name, value in commented.items():
        field_name = known[name]
        if name in computed:
            continue
        if cls.model_fields[field_name].get_default(call_default_factory=True) is None:
            continue  # no default: the commented value is an example
        try:
            # Only this one variable differs from the shipped file.
            configured = parse_settings(cls, **{**active, name: value})
        except SettingsError as exc:
            wrong.append(f"{name}={value!r} is invalid: {exc}")
            continue
        if plain(getattr(configured, field_name)) != plain(getattr(baseline, field_name)):
            wrong.append(
                f"#{name}={value} is not the default ({plain(getattr(baseline, field_name))!r})"
            )
    assert wrong == [], f"{service}.env: " + "; ".join(wrong)
