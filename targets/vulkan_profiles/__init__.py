"""Vulkan device profiles for `compile --target vulkan --vulkan-profile NAME` (JSON target dicts)."""
