"""The HTTP client this process sends with: remediation actions, notifications, Alertmanager's API.

Building an httpx client loads the CA bundle into a new SSL context: about 18 ms of CPU, more than
the rest of a whole incidents.handle run. One client per process pays that once. It keeps no idle
connections: a health check always opens a new one (as a failing service's new clients would), and a
client inherited across the prefork pool's fork never shares a socket with its parent.
"""

from __future__ import annotations

import functools
import os

import httpx


@functools.cache
def _client_of(pid: int) -> httpx.Client:
    return httpx.Client(follow_redirects=False, limits=httpx.Limits(max_keepalive_connections=0))


def http_client() -> httpx.Client:
    """This process's client; pass the timeout with each request. Safe to use from several threads."""
    return _client_of(os.getpid())
