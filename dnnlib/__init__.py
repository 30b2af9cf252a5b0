"""Small shared utilities: EasyDict, class-by-name construction, cached downloads, the user-facing error type."""

from dnnlib.util import EasyDict, UserError, construct_class_by_name, get_cache_dir, get_obj_by_name, open_url

__all__ = ["EasyDict", "UserError", "construct_class_by_name", "get_cache_dir", "get_obj_by_name", "open_url"]
