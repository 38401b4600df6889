"""Words both ends of the HTTP API agree on, in a module light enough for the programs.

``one_line`` shapes every error the API answers and every error the CLI prints, so a
message reads the same on both sides and a hostile value echoed back (a 100 KB container
name) cannot flood a terminal or a log. ``ifname_ok`` is the kernel's rule for interface
names: the API checks an attachment's ``ifname`` with it, the CNI plugin ``CNI_IFNAME``.
"""

from __future__ import annotations

IFNAMSIZ = 16  # the kernel's, including the terminating NUL: names have at most 15 characters


def one_line(message: str, max_word: int = 120) -> str:
    """One readable line (the CLI's errors, and the API's it prints): whitespace collapsed,
    and a word as long as a hostile value (a 100 KB container name echoed in "no network
    namespace '...'") cut short."""
    return " ".join(w if len(w) <= max_word else f"{w[:60]}...({len(w)} characters)"
                    for w in message.split())


def ifname_ok(name: str) -> bool:
    """A name Linux takes for a network interface (the kernel's ``dev_valid_name``)."""
    return (0 < len(name) < IFNAMSIZ and name not in (".", "..") and "/" not in name
            and ":" not in name and not any(c.isspace() for c in name))
