"""weftnet.router: the trio shell that drives the pure core over sockets, devices and HTTP."""
