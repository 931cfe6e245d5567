"""Network transport: TLS credentials, node keys and (later) the gRPC services.

Only the stdlib, ``cryptography`` and ``grpc`` are imported here, so the transport layer can be reasoned about (and
audited) without the rest of corolla.
"""
