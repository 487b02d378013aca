"""The versions of a `BinaryIndex`: a version's name and u checked, and the codes given for one."""

from __future__ import annotations

import numpy as np

from bebrjax.search import codes as codes_lib
from bebrjax.search.storage import MAX_VERSIONS


def check(name: str, u: int, metric: str, registered: int) -> None:
    """Checks a new version `name` of loops `u` for an index of `registered` versions.

    Raises:
      ValueError: naming the problem: an empty name, u outside [0, 3], u > 0
        under the Hamming metric, or no room for another version.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"version={name!r} must be a non-empty string")
    if not isinstance(u, int | np.integer) or not 0 <= u <= 3:
        raise ValueError(f"u={u} must be an integer in [0, 3] (version {name!r})")
    if metric == "hamming" and u != 0:
        raise ValueError(
            f"metric='hamming' needs u=0 (one plane) for every version; version {name!r} has u={u}"
        )
    if registered >= MAX_VERSIONS:
        raise ValueError(f"an index holds at most {MAX_VERSIONS} versions")


def resolve(
    versions: dict[str, int], planes: np.ndarray, version: str | None, m: int, metric: str
) -> tuple[str, int, np.ndarray]:
    """(name, u, checked planes) of codes given for `version` (None: the first one).

    An unknown name is checked as a new version whose u is the planes'
    (3-D [N, u+1, m]), but not registered in `versions`.

    Raises:
      ValueError: naming the problem with the planes or the new version.
    """
    name = next(iter(versions)) if version is None else version
    if name in versions:
        u = versions[name]
    else:
        planes = np.asarray(planes)
        if planes.ndim != 3:
            raise ValueError(
                f"planes of the new version {name!r} must have shape [N, u+1, {m}]; "
                f"got {list(planes.shape)}"
            )
        u = planes.shape[1] - 1
        check(name, u, metric, len(versions))
    return name, u, codes_lib.check_planes(planes, m, u)
