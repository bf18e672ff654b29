"""The wire protocol: COBS frames with CRC32, the msgpack envelope and its fields,
and the one error vocabulary (docs/protocol.md)."""
