"""Traffic splits of an endpoint: giving one deployment a share scales the others proportionally, a
split must add up to 100, and the split before each change is kept for a roll-back. Pure."""

from __future__ import annotations

import json
from typing import Mapping, Optional

from ...errors import ConfigError

__all__ = ["with_share", "check_split", "describe_split", "PREVIOUS_TRAFFIC_TAG", "encode_split", "decode_split"]

#: Endpoint tag holding the split before the last change mii_azure made (for ``rollback_traffic``).
PREVIOUS_TRAFFIC_TAG = "mii_azure_previous_traffic"


def check_split(split: Mapping[str, int], deployments: Optional[list[str]] = None) -> dict[str, int]:
    """``split`` as ints, or ConfigError unless every share is 0-100, they add up to 100 (or all are 0)
    and every name is one of ``deployments``."""
    shares = {name: int(share) for name, share in split.items()}
    bad = {name: share for name, share in shares.items() if not 0 <= share <= 100}
    if bad:
        raise ConfigError(f"Traffic shares must be 0 to 100 percent; got {bad}.", conflict="traffic", split=shares)
    total = sum(shares.values())
    if total not in (0, 100):
        raise ConfigError(
            f"Traffic {describe_split(shares)} adds up to {total}%, not 100%: give the shares that sum to 100 "
            "(or set one deployment's share with set_traffic and let the others scale).",
            conflict="traffic",
            split=shares,
            total=total,
        )
    if deployments is not None:
        unknown = sorted(set(shares) - set(deployments))
        if unknown:
            raise ConfigError(
                f"Traffic names {', '.join(unknown)}, which the endpoint does not have (it has: "
                f"{', '.join(deployments) or 'none'}).",
                conflict="traffic",
                unknown=unknown,
            )
    return shares


def with_share(split: Mapping[str, int], deployment: str, share: int) -> dict[str, int]:
    """``split`` with ``deployment`` at ``share`` percent and the others scaled to the remaining
    ``100 - share`` in proportion to their current shares (largest remainder, so it sums to 100)."""
    if not 0 <= int(share) <= 100:
        raise ConfigError(f"traffic={share}: a share is 0 to 100 percent.", conflict="traffic", nearest=max(0, min(100, int(share))))
    others = {name: int(value) for name, value in split.items() if name != deployment}
    rest = 100 - int(share)
    total = sum(others.values())
    if total == 0:
        if rest and not others:
            raise ConfigError(
                f"{deployment} would take {share}% and no other deployment can take the other {rest}%; use traffic=100.",
                conflict="traffic",
                nearest=100,
            )
        # No one else had traffic: spread the rest evenly (the endpoint had none to scale).
        exact = {name: rest / len(others) for name in others} if others else {}
    else:
        exact = {name: value * rest / total for name, value in others.items()}
    scaled = {name: int(value) for name, value in exact.items()}
    left = rest - sum(scaled.values())
    for name in sorted(exact, key=lambda n: (exact[n] - scaled[n], others[n]), reverse=True)[:left]:
        scaled[name] += 1
    return {**scaled, deployment: int(share)}


def describe_split(split: Mapping[str, int]) -> str:
    """``blue 90% / green 10%``."""
    return " / ".join(f"{name} {share}%" for name, share in sorted(split.items(), key=lambda item: -item[1])) or "no traffic"


def encode_split(split: Mapping[str, int]) -> str:
    """A split as an endpoint tag value."""
    return json.dumps(dict(sorted(split.items())), separators=(",", ":"))


def decode_split(text: Optional[str]) -> Optional[dict[str, int]]:
    """The split an endpoint tag holds, or None."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return {str(name): int(share) for name, share in value.items()} if isinstance(value, dict) else None
