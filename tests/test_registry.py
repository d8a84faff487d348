"""Task types register by decorator, from TASK_MODULES and from installed packages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from task_queue.errors import ConfigError, UnknownTaskType
from task_queue.processors import BUILT_IN_TYPES
from task_queue.registry import ENTRY_POINT_GROUP, Registry, default_registry, load_modules


def test_decorator_records_handler_kind_and_defaults() -> None:
    registry = Registry()

    @registry.task("resize", max_retries=9, timeout_seconds=5, queue="images", priority=2)
    def resize(payload: dict[str, Any]) -> None:
        return None

    @registry.task()
    async def notify(payload: dict[str, Any], ctx: Any) -> None:
        return None

    kind = registry.get("resize")
    assert (kind.max_retries, kind.timeout_seconds, kind.queue, kind.priority) == (
        9,
        5,
        "images",
        2,
    )
    assert not kind.is_async
    assert not kind.wants_context
    assert registry.get("notify").is_async
    assert registry.get("notify").wants_context
    assert registry.names() == ["notify", "resize"]
    with pytest.raises(UnknownTaskType):
        registry.get("missing")


def _write_package(root: Path, module: str, entry_points: str) -> None:
    (root / f"{module}.py").write_text(
        "from task_queue import task_type\n\n"
        f"@task_type('{module}_type')\n"
        "def handler(payload):\n"
        "    return payload\n"
    )
    dist = root / f"{module}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_points}\n")


def test_installed_packages_register_through_their_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_package(tmp_path, "plugin_tasks", "plugin = plugin_tasks")
    monkeypatch.syspath_prepend(str(tmp_path))

    load_modules([])

    assert "plugin_tasks_type" in default_registry


def test_broken_entry_point_is_a_config_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_package(tmp_path, "broken_tasks", "broken = no_such_module_here")
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(ConfigError, match="entry point broken = no_such_module_here"):
        load_modules([])


def test_task_modules_that_cannot_be_imported_name_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"^TASK_MODULES='nowhere\.tasks'"):
        load_modules(["nowhere.tasks"])


def test_each_built_in_type_is_registered_by_the_module_named_for_it() -> None:
    for name, module in BUILT_IN_TYPES.items():
        assert default_registry.get(name).handler.__module__ == module


def test_a_deferred_module_that_registers_nothing_leaves_the_type_unknown() -> None:
    registry = Registry(deferred={"ghost": "json"})
    assert "ghost" in registry
    assert registry.names() == ["ghost"]
    with pytest.raises(UnknownTaskType):
        registry.get("ghost")
    assert "ghost" not in registry
