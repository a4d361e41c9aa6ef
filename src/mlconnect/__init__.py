"""mlconnect: train sequential recommenders on your own GPU box over SSH."""

__version__ = "0.1.0"


def baked_build_id() -> str | None:
    """The build id baked into a wheel `mlconnect bootstrap` built; None for any other install.

    Here, not in remote/wheel.py: the host agent asks on every answer and must not import the wheel builder.
    """
    try:
        from mlconnect._build import SOURCE_HASH  # type: ignore[import-not-found]
    except ImportError:
        return None
    return str(SOURCE_HASH)
