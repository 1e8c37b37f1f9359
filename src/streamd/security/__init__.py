"""Transport security and access control for the server's listeners (docs/security.md).

- ``tls``: TLS contexts from PEM files, reloaded on SIGHUP, and the server side of a
  connection's handshake (plaintext to a TLS listener is refused with a log line).
- ``principals``: the credentials-and-policy file (access keys, allowed actions on stream-name
  patterns), pure; ``actions``: what each native and Kinesis operation needs, pure.
- ``guard``: the live state both front ends consult (principals re-read on SIGHUP) and the
  audit log (``audit``).
- ``certs``: ``streamd dev certs``' local CA and certificates (``cryptography``).
"""
