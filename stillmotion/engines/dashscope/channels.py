"""DashScope's channels are the relay's (``relay/channels.py``); the names stay importable
from here."""

from stillmotion.engines.relay.channels import (
    Admission,
    Channel,
    ChannelConfig,
    KeyRing,
    TokenBucket,
    key_fingerprint,
    parse_channels,
    parse_model_map,
    split_keys,
)

__all__ = [
    "Admission",
    "Channel",
    "ChannelConfig",
    "KeyRing",
    "TokenBucket",
    "key_fingerprint",
    "parse_channels",
    "parse_model_map",
    "split_keys",
]
