"""
``twistd fbstream``: the options and the service of every role.
"""

from __future__ import annotations

import sys
from typing import Any, cast

from twisted.application.service import IService, MultiService
from twisted.python import usage

from fbstream import config as _config
from fbstream.reactors import IReactorRoles
from fbstream.roles.build import Process, build_role


class Options(usage.Options):
    synopsis = "[--role=ROLE] [--config=PATH] [--set key=value ...] [--demo]"
    longdesc = (
        "Run one role of fbstream (pop, dc-proxy, encoder, origin) or all of them "
        "in one process; or a load-generating agent (loadgen), or the global load balancer (glb). Settings come from conf/<role>.toml (or --config) and "
        "--set overrides, e.g. --set rtmp.listen=tcp:1936 (for --role=all, prefix "
        "the role: --set pop.rtmp.listen=tcp:1936)."
    )
    optParameters = [
        ["role", "r", "all", "pop, dc-proxy, encoder, origin, all, loadgen or glb"],
        ["config", "c", None, "TOML configuration file (default: conf/<role>.toml)"],
        ["keep-logs", None, 10, "rotated twistd --logfile files kept (each 1 MB)", int],
    ]
    optFlags = [
        ["demo", None, "publish a synthetic test pattern (to the encoder's ingest, else the PoP's)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["set"] = []
        self.configs: dict[str, _config.RoleConfig] = {}

    def getUsage(self, width: int | None = None) -> str:
        return "%s\nSettings (in conf/<role>.toml, or --set key=value; the roles that take each):\n%s\n" % (
            super().getUsage(width), _config.describe())

    def opt_set(self, value: str) -> None:
        """Override one setting: dotted.key=value (repeatable)"""
        self["set"].append(value)

    def postOptions(self) -> None:
        from fbstream.roles.build import check_secrets

        try:
            self.configs = _config.load(self["role"], self["config"], self["set"])
            check_secrets(self.configs)
        except _config.ConfigError as e:
            raise usage.UsageError(str(e)) from None
        if self["demo"] and not {"pop", "encoder"} & set(self.configs):
            raise usage.UsageError("--demo needs a role with an RTMP ingest (all, pop or encoder)")


def keep_rotated_logs(count: int) -> None:
    """
    twistd's ``--logfile`` rotates at 1 MB but keeps every rotated file, so a
    flood of log lines fills the disk; and it offers no option to keep fewer.
    Its log file is made after this plugin's service (``makeService`` runs
    first), through ``LogFile.fromFullPath``: from here on that keeps at most
    ``count`` rotated files unless told otherwise.
    """
    from twisted.python import logfile

    made = logfile.LogFile.fromFullPath.__func__  # type: ignore[attr-defined]
    if getattr(made, "fbstream_keeps", None) is not None:
        made = made.fbstream_made

    def from_full_path(cls: Any, filename: str, *args: Any, **kwargs: Any) -> Any:
        if len(args) < 3:
            kwargs.setdefault("maxRotatedFiles", count)
        return made(cls, filename, *args, **kwargs)

    from_full_path.fbstream_keeps = count  # type: ignore[attr-defined]
    from_full_path.fbstream_made = made  # type: ignore[attr-defined]
    logfile.LogFile.fromFullPath = classmethod(from_full_path)  # type: ignore[method-assign,assignment]


def makeService(options: Options, reactor: IReactorRoles | None = None) -> IService:
    keep_rotated_logs(options["keep-logs"])
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = cast(IReactorRoles, _reactor)
    top = MultiService()
    process = Process(reactor, all_in_one=len(options.configs) > 1)
    for cfg in options.configs.values():
        build_role(cfg, process).setServiceParent(top)
    if options["demo"]:
        from fbstream.demo import demo_publisher, demo_url
        from fbstream.registry.records import VideoRecord

        target = options.configs.get("pop") or options.configs["encoder"]
        url = demo_url(target)
        if process.api is not None:
            # The demo goes live the way a broadcaster does: a live video from
            # the API's registry and a token for it, through the PoP.
            api = process.api
            api.registry.create_video("demo", VideoRecord("demo", api.settings.datacenter, reactor.seconds(), "demo"))
            url += "?token=" + api.keys.sign("demo", api.settings.datacenter, reactor.seconds(), 365 * 86400)
        demo_publisher(reactor, sys.executable, url).setServiceParent(top)
    return top
