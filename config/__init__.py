"""Configuration: defaults of every setting and strict overrides (see config/config.py)."""
from .config import (  # noqa: F401
    DATASET_NAMES,
    DEFAULTS,
    ConfigError,
    apply_overrides,
    check_image_size,
    config_to_dict,
    dataset_root,
    dump_config,
    get_config,
    load_config_file,
    read_config_file,
    parse_override,
    save_config,
    update_config,
    validate_config,
)
