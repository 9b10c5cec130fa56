"""How llmbot reaches its servers: the certificates it trusts and the proxy it goes through.

All three connections (Mattermost's REST API, its websocket, the LLM) get the one SSL context
and the one proxy rule below, read from the process environment, rather than each client's own
defaults: httpx trusts certifi's bundle unless it reads SSL_CERT_FILE, aiohttp the system store
as it was when aiohttp was imported, and each reads proxies its own way (aiohttp knows no
HTTPS_PROXY for a wss:// URL). A failed TLS handshake is named here too, for every adapter.

    SSL_CERT_FILE / SSL_CERT_DIR   the CA certificates to trust instead of the system's
    HTTPS_PROXY / HTTP_PROXY       the proxy for https:// (and wss://) / http:// (and ws://) URLs
    ALL_PROXY                      the proxy for either, when the one above is not set
    NO_PROXY                       hosts (and domain suffixes) reached directly; * for all
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import logging
import os
import ssl
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

import aiohttp
import certifi

from .errors import ConfigError

log = logging.getLogger(__name__)

_NAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
_EXPIRED = 10  # X509_V_ERR_CERT_HAS_EXPIRED
_CLOSED = (ssl.SSLEOFError, ssl.SSLZeroReturnError)  # the peer hung up: not a TLS set-up problem


def ssl_context() -> ssl.SSLContext:
    """The context every connection verifies servers with: the CA certificates SSL_CERT_FILE and
    SSL_CERT_DIR name, else the system's store (certifi's bundle where the system has none).

    Built once per value of those variables and shared. Raises ConfigError naming the variable
    when its file holds no certificate or does not exist."""
    return _context(os.environ.get("SSL_CERT_FILE") or None, os.environ.get("SSL_CERT_DIR") or None)


@functools.lru_cache(maxsize=4)
def _context(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    if cafile is None and capath is None:
        context = ssl.create_default_context()
        if not _system_store():
            context.load_verify_locations(certifi.where())
        return context
    try:
        context = ssl.create_default_context(cafile=cafile, capath=capath)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        name, value = ("SSL_CERT_FILE", cafile) if cafile else ("SSL_CERT_DIR", capath)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([f"{name}={value}: cannot load CA certificates from it ({reason}); "
                           "point it at a PEM file of the CA certificates to trust"]) from None
    log.info("TLS: trusting the CA certificates in %s", " and ".join(
        f"{name}={value}" for name, value in (("SSL_CERT_FILE", cafile), ("SSL_CERT_DIR", capath)) if value))
    return context


def _system_store() -> bool:
    """Does OpenSSL's compiled-in CA file or directory exist (a system with ca-certificates)?"""
    paths = ssl.get_default_verify_paths()
    capath = paths.openssl_capath
    return os.path.isfile(paths.openssl_cafile) or (os.path.isdir(capath) and bool(os.listdir(capath)))


@dataclass(frozen=True)
class Proxy:
    """A proxy to go through: its URL without credentials, and the header that carries them."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    variable: str = ""  # the environment variable that named it, for the log

    def __str__(self) -> str:
        return f"{self.url} ({self.variable})" if self.variable else self.url


def proxy_for(url: str) -> Proxy | None:
    """The proxy the environment names for `url`, or None: none set, or NO_PROXY exempts its host.

    Lower-case names win, as in urllib. NO_PROXY entries match a host or a domain suffix, with a
    port or without, or a network like 10.0.0.0/8; `*` matches all. wss:// goes where https://
    goes, ws:// where http:// goes. Raises ConfigError for a proxy that is not http:// or https://."""
    parts = urllib.parse.urlsplit(url)
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
    proxies = urllib.request.getproxies_environment()
    key = scheme if proxies.get(scheme) else "all"
    named = proxies.get(key)
    host = parts.hostname or ""
    port = parts.port or {"https": 443, "http": 80}.get(scheme)
    if not named or _exempt(host, port, proxies.get("no", "")):
        return None
    if "://" not in named:
        named = "http://" + named
    proxy = urllib.parse.urlsplit(named)
    try:
        proxy_port = proxy.port
    except ValueError:  # not a number, or out of range
        proxy_port = -1
    if proxy.scheme not in ("http", "https") or not proxy.hostname or proxy_port == -1:
        raise ConfigError([f"{key.upper()}_PROXY={proxy.scheme}://{proxy.hostname or ''}...: not a proxy llmbot can use; "
                           "name an http:// (or https://) proxy, e.g. http://proxy.example.com:3128"])
    headers = {}
    if proxy.username or proxy.password:  # sent as a header: aiohttp deprecates its proxy_auth
        pair = f"{urllib.parse.unquote(proxy.username or '')}:{urllib.parse.unquote(proxy.password or '')}"
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    netloc = proxy.hostname or ""
    netloc = f"[{netloc}]" if ":" in netloc else netloc
    if proxy_port:
        netloc += f":{proxy_port}"
    return Proxy(urllib.parse.urlunsplit((proxy.scheme, netloc, proxy.path, "", "")), headers, f"{key.upper()}_PROXY")


def _exempt(host: str, port: int | None, no_proxy: str) -> bool:
    """Does NO_PROXY name `host` (or a domain it is in, or its network, e.g. 10.0.0.0/8), with its port or without?"""
    host = host.lower().rstrip(".")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if entry == "*":
            return True
        name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if not name or (entry_port and entry_port != str(port)):
            continue
        name = name.strip("[]").lstrip(".")
        if host == name or host.endswith("." + name) or _in_network(host, name):
            return True
    return False


def _in_network(host: str, network: str) -> bool:
    try:
        return "/" in network and ipaddress.ip_address(host) in ipaddress.ip_network(network, strict=False)
    except ValueError:
        return False


def tls_problem(exc: BaseException) -> str | None:
    """What went wrong in a TLS handshake somewhere in `exc`'s causes, with the fix; None if nothing did."""
    cause = _ssl_cause(exc)
    if cause is None:
        return None
    if isinstance(cause, ssl.SSLCertVerificationError):
        detail = getattr(cause, "verify_message", None) or cause.reason or "not trusted"
        what = f"TLS: certificate verify failed: {detail.rstrip('.')}"
        if getattr(cause, "verify_code", None) in _NAME_MISMATCH:
            return f"{what}; use the host name the certificate was issued for"
        if getattr(cause, "verify_code", None) == _EXPIRED:
            return f"{what}; the server's certificate must be renewed"
        cafile = os.environ.get("SSL_CERT_FILE")
        if cafile:
            return f"{what}; SSL_CERT_FILE={cafile} does not hold the CA that signed the server's certificate"
        return f"{what}; set SSL_CERT_FILE to your CA bundle"
    reason = cause.reason or str(cause)
    return f"TLS: the handshake failed: {reason} (does the server speak HTTPS on that port?)"


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The certificate error in `exc`'s causes (explicit and implicit), or the SSL error of a failed
    handshake; None for none, and for a connection merely closed mid-handshake (a restart, say)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    handshake = False  # under aiohttp's ClientSSLError: the error came while connecting
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        handshake = handshake or isinstance(cause, aiohttp.ClientSSLError)
        # aiohttp's wrappers keep ssl's own error in an attribute (and some are ssl errors themselves)
        nested = getattr(cause, "certificate_error", None) or getattr(cause, "os_error", None)
        found = nested if isinstance(nested, ssl.SSLError) else cause
        if isinstance(found, ssl.SSLCertVerificationError):
            return found
        if isinstance(found, ssl.SSLError) and not isinstance(found, _CLOSED):
            return found if handshake else None
        cause = cause.__cause__ or cause.__context__
    return None
