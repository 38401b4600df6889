"""weftnet.proto: the pure, sans-IO core: no I/O, no clocks, no randomness of its own."""
