"""Default configuration and the validated settings model.

``config/node.toml`` is the default configuration file and the reference for
every option; :func:`load_settings` reads it (or a site's file), applies
``SEGNODE__SECTION__KEY`` environment overrides, then command-line overrides.
"""

from segnode.config.errors import ConfigError, SegnodeError
from segnode.config.settings import (
    DEFAULT_CONFIG_PATH,
    CompletionPolicy,
    DeadlineAction,
    DuplicatePolicy,
    LateSeriesPolicy,
    Peer,
    RoutingAction,
    RoutingRule,
    Settings,
    TagCondition,
    load_settings,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "CompletionPolicy",
    "ConfigError",
    "DeadlineAction",
    "DuplicatePolicy",
    "LateSeriesPolicy",
    "Peer",
    "RoutingAction",
    "RoutingRule",
    "SegnodeError",
    "Settings",
    "TagCondition",
    "load_settings",
]
