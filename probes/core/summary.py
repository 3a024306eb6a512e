"""The base of the typed results that runs return and commands print.

Every ``run_*`` entry point (``run_probe_study``, ``run_interventions``, ``run_study``,
``run_bootstrap``, ``run_training``, ``run_compare``), ``summarise_study`` and the PRISM pipeline
return a frozen dataclass deriving from ``Summary``: its fields are the numbers (every one with
a CI an ``Estimate``), its ``lines()`` what the command and the demo print, one line each.
"""

from __future__ import annotations

__all__ = ["Summary"]


class Summary:
    """A typed result that formats itself as the lines its command prints."""

    def lines(self) -> list[str]:
        """What the command prints, one line each."""
        raise NotImplementedError

    def format(self, *args, **kwargs) -> str:
        """``lines(*args, **kwargs)`` joined into one text."""
        return "\n".join(self.lines(*args, **kwargs))

    def __str__(self) -> str:
        return self.format()
