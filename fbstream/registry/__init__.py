"""Who owns each live video: the registry and its embedded and etcd backends."""

from fbstream.registry.base import (  # noqa: F401
    Claim,
    Fenced,
    IRegistry,
    Owned,
    Owner,
    Ownership,
    VideoPage,
)
from fbstream.registry.records import (  # noqa: F401
    ListedVideo,
    VideoRecord,
    VideoState,
    VideoStatus,
)
