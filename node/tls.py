"""DICOM TLS contexts (PS3.15 Annex B, the BCP 195 profile) built from configuration.

One home for the TLS policy of both directions: the listener's server context and
each destination's client context. TLS 1.2 is the floor (BCP 195); certificates
and keys are PEM files named in the configuration, loaded once at start-up so a
wrong path fails the start, not the first association.
"""

from __future__ import annotations

import ssl

from segnode.config.destinations import DestinationTls
from segnode.config.settings import ListenerTls

MINIMUM_TLS_VERSION = ssl.TLSVersion.TLSv1_2


def listener_ssl_context(tls: ListenerTls) -> ssl.SSLContext | None:
    """The listener's server context, or None when TLS is off.

    With ``require_client_cert`` a peer without a certificate chaining to
    ``ca_file`` fails the handshake; with only ``ca_file`` a certificate is
    verified when offered (``CERT_OPTIONAL``).
    """
    if not tls.enabled:
        return None
    if tls.cert_file is None or tls.key_file is None:  # the settings validator requires both
        raise ValueError("listener.tls: enabled needs cert_file and key_file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_TLS_VERSION
    context.load_cert_chain(certfile=str(tls.cert_file), keyfile=str(tls.key_file))
    if tls.ca_file is not None:
        context.load_verify_locations(cafile=str(tls.ca_file))
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def destination_ssl_context(tls: DestinationTls) -> ssl.SSLContext | None:
    """A destination's client context, or None when TLS is off.

    The destination's certificate is always verified (against ``ca_file`` or the
    system store); ``check_hostname`` additionally requires it to name the host.
    """
    if not tls.enabled:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = MINIMUM_TLS_VERSION
    if tls.ca_file is not None:
        context.load_verify_locations(cafile=str(tls.ca_file))
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = tls.check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(certfile=str(tls.cert_file), keyfile=str(tls.key_file))
    return context
