"""Shipped SoC data files (``<name>.toml``); a package only so that wheels include them."""
