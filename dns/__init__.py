"""weftnet.dns: see ARCHITECTURE (pure core; filled in by its issue)."""
