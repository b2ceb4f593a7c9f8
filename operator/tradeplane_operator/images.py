"""Which engine images a Market may name: the operator's image policy.

An engine pod runs with the market's NATS credentials and the PostgreSQL DSN Secret,
so a Market that names an image runs that code with those secrets: whoever may create
or edit a Market could otherwise run anything with them. ``spec.engine.image`` is
therefore checked against ``Config.allowed_engine_images``, shell-style patterns
(``fnmatch``: ``*`` matches any run of characters, ``/`` and ``:`` included) matched
against the whole image reference. Without patterns, only the repository of the
operator's own engine image is allowed, at any tag or digest; the pattern ``*`` allows
every image (a cluster where creating Markets is as trusted as creating pods).
A Market without an image runs the operator's, which is always allowed.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from tradeplane_operator.config import Config


def repository(image: str) -> str:
    """The image reference without its tag or digest."""
    name = image.split("@", 1)[0]
    registry_end = name.rfind("/")
    tag = name.rfind(":")
    return name[:tag] if tag > registry_end else name


def patterns(config: Config) -> tuple[str, ...]:
    """The patterns in force: the configured ones, or the default image's repository."""
    if config.allowed_engine_images:
        return config.allowed_engine_images
    own = repository(config.engine_image)
    return (own, f"{own}:*", f"{own}@*")


def allowed(image: str | None, config: Config) -> bool:
    if image is None or image == config.engine_image:
        return True
    return any(fnmatchcase(image, pattern) for pattern in patterns(config))
