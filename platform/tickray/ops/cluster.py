"""Cluster launcher configs (`cluster.yaml`, `infra/local-cluster.yaml`) checked with Ray's own schema and
rules before any cloud call, so that a wrong key is named here, not half-way through `ray up`."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import yaml

from tickray.errors import ConfigError

FAKE_PROVIDER = "fake_multinode"


def _where(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def validate_cluster_config(path: Path) -> dict[str, Any]:
    """The config at ``path``, as `ray up` would see it; a one-line ConfigError naming the key otherwise."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)  # prepare_config narrates at INFO
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read it as YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a cluster config is a mapping of keys, not {type(raw).__name__}")
    provider = raw.get("provider")
    if not isinstance(provider, dict) or "type" not in provider:
        raise ConfigError(f"{path}: provider.type is missing (aws, gcp, azure, {FAKE_PROVIDER}, ...)")
    try:
        # `ray up` fills in its defaults for the provider first. The fake provider's defaults file is not
        # in Ray's wheel, so that config must be complete as written.
        config = raw if provider["type"] == FAKE_PROVIDER else prepare_config(copy.deepcopy(raw))
        validate_config(config)
    except jsonschema.ValidationError as e:
        raise ConfigError(f"{path}: {_where(e.absolute_path)}: {e.message}") from None
    except (ValueError, RuntimeError, KeyError) as e:
        raise ConfigError(f"{path}: {' '.join(str(e).split())}") from None
    return config


def head_resources(config: dict[str, Any]) -> dict[str, float]:
    """The resources the config gives its head node type."""
    return dict(config["available_node_types"][config["head_node_type"]].get("resources", {}))
