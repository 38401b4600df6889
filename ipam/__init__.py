"""weftnet.ipam: see ARCHITECTURE (pure core; filled in by its issue)."""
