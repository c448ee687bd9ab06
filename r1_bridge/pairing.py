"""The pairing QR code an R1 scans in Settings → OpenClaw: this machine's LAN addresses, port, token."""

from __future__ import annotations

import ipaddress
import json
import socket

import qrcode
import qrcode.image.svg

QR_TYPE = "clawdbot-gateway"


def lan_addresses() -> list[str]:
    """This machine's private IPv4 addresses, the one with the default route first."""
    candidates = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 9))  # sends nothing: only picks the outgoing interface
            candidates.append(probe.getsockname()[0])
        except OSError:
            pass
    try:
        candidates += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    except OSError:
        pass
    found: list[str] = []
    for address in candidates:
        ip = ipaddress.ip_address(address)
        if ip.is_private and not ip.is_loopback and not ip.is_link_local and address not in found:
            found.append(address)
    return found


def pairing_payload(token: str, port: int, tls: bool, ips: list[str] | None = None) -> dict:
    """What the QR code says, in the form the R1 expects."""
    return {"type": QR_TYPE, "version": 1, "ips": ips if ips is not None else lan_addresses(), "port": port,
            "token": token, "protocol": "wss" if tls else "ws"}


def qr_svg(data: dict) -> str:
    """``data`` as compact JSON in a QR code: an ``<svg>`` element, ready to inline in a page."""
    text = json.dumps(data, separators=(",", ":"))
    image = qrcode.make(text, image_factory=qrcode.image.svg.SvgPathImage, border=2)
    return image.to_string(encoding="unicode")
