"""The audit log: exactly one JSON-lines record per RPC, written off the event loop."""
