"""weftnet: a mesh network for containers. The code lives in weftnet.proto, .router, .ipam, .dns."""

__version__ = "0.1.0"
