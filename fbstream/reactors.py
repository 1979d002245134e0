"""
The reactor capabilities that fbstream's parts need together, as interfaces.

Each part takes its reactor as a parameter typed by what it calls on it. One
capability is Twisted's own interface (``IReactorTime`` for whatever waits, so
a test passes a ``Clock``); where a part needs several, the type is one of the
interfaces here, each extending Twisted's, because mypy has no intersection
type and a ``typing.Protocol`` could not be handed on to Twisted's APIs that
want its interfaces (``Deferred.addTimeout``, ``deferToThreadPool``). Twisted
does the same (``IDistTrialReactor``). A real reactor provides every
interface these extend, and a ``MemoryReactorClock`` the time, TCP, SSL, UNIX
and core parts (a test that needs threads or processes adds them); no code
asks whether an object provides the combined one.
"""

from __future__ import annotations

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFromThreads,
    IReactorProcess,
    IReactorSSL,
    IReactorTCP,
    IReactorTime,
    IReactorUNIX,
)


class IReactorTimeFromThreads(IReactorTime, IReactorFromThreads):
    """
    Waits, and is called from other threads: what hands work to a thread pool
    and takes the results back on the reactor thread.
    """


class IReactorClients(IReactorTime, IReactorTCP, IReactorSSL, IReactorUNIX):
    """
    Waits, and connects to the endpoint strings a configuration holds
    (``tcp:``, ``ssl:``, ``unix:``, built by ``clientFromString``).
    """


class IReactorServers(IReactorClients, IReactorCore):
    """
    What ``IReactorClients`` does, and also listens on endpoint strings as
    services (``strports.service``).
    """


class IReactorProcessTime(IReactorProcess, IReactorTime):
    """A ``ProcessMonitor``'s reactor: it spawns children and waits to restart them."""


class IReactorRoles(IReactorServers, IReactorTimeFromThreads, IReactorProcessTime):
    """
    Everything the roles of one process use between them, which is what the
    composition root hands out: a real reactor (cast to this where it enters,
    as Twisted's own declared type of the global reactor lacks some parts).
    """
