"""Prometheus metrics: per-call instruments fed by each RPC's audit record
(`calls`), live gateway state read at scrape time (`state`), and the HTTP endpoint
(`endpoint`). Every metric is in the server's own CollectorRegistry, never the
process-wide default, so several gateways can share a process."""
